#!/usr/bin/env bash
# Buffer-strategy benchmark (memory export). For each strategy:
#   spike   384 connections: one 32 MiB WRITE each at once, then one 32 MiB
#           READ each, then idle: daemon peak RSS and RSS 10 s later
#   waves   the same in waves of 16 connections, every byte verified
#   4k      384 connections of 4 KiB random reads for 10 s (fio): IOPS, RSS
#   1M      4 connections of 1 MiB sequential reads / writes at iodepth 8
# Prints one table. Needs ~14 GiB free memory (fixed and exact peak at 12 GiB).
#
# Usage: tests/bench/buffers.sh [BUILD_DIR]   (env: CONNECTIONS=384 STRATEGIES="...")
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
NBDMGRD=$BUILD/daemon/nbdmgrd
N=${CONNECTIONS:-384}
CONFIGS=${STRATEGIES:-"fixed grow exact pool pool:256MiB stream"}
# shellcheck source=lib.sh
. "$HERE/lib.sh"
ulimit -n 8192
WORK=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

start() {  # start STRATEGY [CAP]
  local strategy=$1 cap=${2:-}
  rm -f "$WORK/nbd.sock"
  "$NBDMGRD" --log-level warn --nbd-listen "unix:$WORK/nbd.sock" \
    --export "name=b,backend=memory,size=1GiB,buffer-strategy=$strategy,pool-idle-release=5s" \
    ${cap:+--memory-cap "$cap"} &
  PID=$!
  wait_for "$WORK/nbd.sock"
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }
URI() { echo "nbd+unix:///b?socket=$WORK/nbd.sock"; }
mib() { $PY -c "print(round($1/1048576))"; }
rss() { awk '/^VmRSS/{print $2*1024}' "/proc/$PID/status"; }
hwm() { awk '/^VmHWM/{print $2*1024}' "/proc/$PID/status"; }

printf '%-13s %9s %9s %9s %9s %8s %8s %9s %9s\n' strategy "spike pk" "spike 10s" "waves pk" \
  "waves 10s" "4k IOPS" "4k RSS" "1M rd MB/s" "1M wr MB/s"
for cfg in $CONFIGS; do
  strategy=${cfg%%:*}; cap=""; [ "$cfg" != "$strategy" ] && cap=${cfg#*:}
  start "$strategy" "$cap"
  s=$($PY "$HERE/nbdload.py" spike "$(URI)" --connections "$N" --pid "$PID")
  stop
  start "$strategy" "$cap"
  w=$($PY "$HERE/nbdload.py" spike "$(URI)" --connections "$N" --wave 16 --pid "$PID")
  stop
  start "$strategy" "$cap"
  # Fill and read a 32 MiB region, so RSS counts the same export data as
  # after the spikes.
  fio --name=fill --ioengine=nbd --uri="$(URI)" --rw=write --bs=1M --iodepth=8 \
    --size=32M >/dev/null 2>&1
  iops=$(fio --name=small --ioengine=nbd --uri="$(URI)" --rw=randread --bs=4k --iodepth=1 \
           --numjobs="$N" --thread --group_reporting --size=32M --time_based --runtime=10 \
           --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
         $PY -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))')
  small_rss=$(hwm)
  # Throughput rows (after the RSS reading: they use the whole 1 GiB; the
  # writes come first so the reads return data, not holes).
  wr=$(fio --name=tp --ioengine=nbd --uri="$(URI)" --rw=write --bs=1M --iodepth=8 --numjobs=4 \
         --thread --group_reporting --size=1G --time_based --runtime=5 --output-format=json \
         2>/dev/null | sed -n '/^{/,$p' |
       $PY -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1e6))')
  rd=$(fio --name=tp --ioengine=nbd --uri="$(URI)" --rw=read --bs=1M --iodepth=8 --numjobs=4 \
         --thread --group_reporting --size=1G --time_based --runtime=5 --output-format=json \
         2>/dev/null | sed -n '/^{/,$p' |
       $PY -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]/1e6))')
  stop
  field() { $PY -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
  printf '%-13s %8sM %8sM %8sM %8sM %8s %7sM %9s %9s\n' "$cfg" \
    "$(mib "$(field "$s" peak_rss)")" "$(mib "$(field "$s" settled_rss)")" \
    "$(mib "$(field "$w" peak_rss)")" "$(mib "$(field "$w" settled_rss)")" \
    "$iops" "$(mib "$small_rss")" "$rd" "$wr"
done
echo "(RSS of nbdmgrd in MiB: peak = VmHWM, 10s = VmRSS 10 s after the spike with all"
echo " $N connections still open; the export itself holds 32 MiB after the spikes)"
