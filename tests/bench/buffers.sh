#!/usr/bin/env bash
# Buffer-strategy benchmark (memory export), one row per strategy:
#   spike   N connections (384): one 32 MiB WRITE each at the same moment,
#           then one 32 MiB READ each, then idle: daemon peak RSS (VmHWM) and
#           RSS 10 s later, connections still open
#   waves   the same in waves of 16 connections, every byte verified
#   4k      N connections doing 4 KiB random reads for 10 s (fio): IOPS, and
#           the daemon's peak RSS during that run (first round)
#   1M      4 connections of 1 MiB sequential reads / writes at iodepth 8
# Memory phases use a fresh daemon per strategy (for VmHWM). Speed phases
# run one daemon per strategy side by side, alternate between them every
# round, and report medians. Needs ~14 GiB free (fixed, grow peak at 12 GiB).
#
# Usage: tests/bench/buffers.sh [BUILD_DIR]
#   env: CONNECTIONS=384 ROUNDS=3 STRATEGIES="fixed grow exact pool pool:256MiB stream"
#        BACKEND=memory|file (memory exports lend their pages to READs, so
#        only their WRITEs take buffers; a file export's READs take them too)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
NBDMGRD=$BUILD/daemon/nbdmgrd
N=${CONNECTIONS:-384}
ROUNDS=${ROUNDS:-3}
CONFIGS=(${STRATEGIES:-fixed grow exact pool pool:256MiB stream})
# shellcheck source=lib.sh
. "$HERE/lib.sh"
ulimit -n 8192
WORK=$(mktemp -d)
declare -A PIDS
trap 'kill ${PIDS[*]:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

backend_spec() {  # backend_spec CONFIG
  case ${BACKEND:-memory} in
    memory) echo "backend=memory,size=1GiB" ;;
    file) echo "backend=file,path=$WORK/$1.img,size=1GiB" ;;
    *) echo "BACKEND must be memory or file" >&2; exit 2 ;;
  esac
}
start() {  # start CONFIG: serves unix:$WORK/CONFIG.sock
  local cfg=$1 strategy=${1%%:*} cap=""
  [ "$cfg" != "$strategy" ] && cap=${cfg#*:}
  rm -f "$WORK/$cfg.sock"
  "$NBDMGRD" --log-level warn --nbd-listen "unix:$WORK/$cfg.sock" --metrics-listen 127.0.0.1:0 \
    --export "name=b,$(backend_spec "$cfg"),buffer-strategy=$strategy,pool-idle-release=5s" \
    --memory-cap "${cap:-none}" --connection-memory none &
  PIDS[$cfg]=$!
  wait_for "$WORK/$cfg.sock"
}
stop() { kill "${PIDS[$1]}"; wait "${PIDS[$1]}" 2>/dev/null || true; unset "PIDS[$1]"; }
uri() { echo "nbd+unix:///b?socket=$WORK/$1.sock"; }
mib() { $PY -c "print(round($1/1048576))"; }
hwm() { awk '/^VmHWM/{print $2*1024}' "/proc/${PIDS[$1]}/status"; }
field() { $PY -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
fio_json() {  # fio_json CONFIG RW BS QD JOBS SIZE SECONDS -> read+write IOPS and MB/s
  fio --name=b --ioengine=nbd --uri="$(uri "$1")" --rw="$2" --bs="$3" --iodepth="$4" \
      --numjobs="$5" --thread --group_reporting --size="$6" --time_based --runtime="$7" \
      --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    $PY -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; r,w=j["read"],j["write"]; print(round(r["iops"]+w["iops"]), round((r["bw_bytes"]+w["bw_bytes"])/1e6))'
}

declare -A SPIKE_PK SPIKE_10 WAVE_PK WAVE_10 IOPS RSS4K RD WR
echo "memory phase ($N connections)..." >&2
for cfg in "${CONFIGS[@]}"; do
  start "$cfg"
  s=$($PY "$HERE/nbdload.py" spike "$(uri "$cfg")" --connections "$N" --pid "${PIDS[$cfg]}")
  stop "$cfg"
  start "$cfg"
  w=$($PY "$HERE/nbdload.py" spike "$(uri "$cfg")" --connections "$N" --wave 16 --pid "${PIDS[$cfg]}")
  stop "$cfg"
  SPIKE_PK[$cfg]=$(mib "$(field "$s" peak_rss)"); SPIKE_10[$cfg]=$(mib "$(field "$s" settled_rss)")
  WAVE_PK[$cfg]=$(mib "$(field "$w" peak_rss)"); WAVE_10[$cfg]=$(mib "$(field "$w" settled_rss)")
done

echo "speed phase ($ROUNDS rounds)..." >&2
for cfg in "${CONFIGS[@]}"; do
  start "$cfg"
  # 32 MiB of data for the 4 KiB reads, so RSS counts what the spikes did.
  fio --name=fill --ioengine=nbd --uri="$(uri "$cfg")" --rw=write --bs=1M --size=32M >/dev/null 2>&1
done
for round in $(seq 1 "$ROUNDS"); do
  order=("${CONFIGS[@]}")
  [ $((round % 2)) -eq 0 ] && order=($(printf '%s\n' "${CONFIGS[@]}" | tac))
  for cfg in "${order[@]}"; do
    read -r iops _ <<<"$(fio_json "$cfg" randread 4k 1 "$N" 32M 10)"
    IOPS[$cfg]+=" $iops"
    [ "$round" = 1 ] && RSS4K[$cfg]=$(mib "$(hwm "$cfg")")
  done
  for cfg in "${order[@]}"; do
    read -r _ mbps <<<"$(fio_json "$cfg" write 1M 8 4 1G 5)"; WR[$cfg]+=" $mbps"
  done
  for cfg in "${order[@]}"; do
    read -r _ mbps <<<"$(fio_json "$cfg" read 1M 8 4 1G 5)"; RD[$cfg]+=" $mbps"
  done
  echo "round $round done" >&2
done

printf '\n%-12s %9s %9s %9s %9s %9s %7s %10s %10s\n' strategy "spike pk" "spike 10s" \
  "waves pk" "waves 10s" "4k IOPS" "4k RSS" "1M rd MB/s" "1M wr MB/s"
for cfg in "${CONFIGS[@]}"; do
  # shellcheck disable=SC2086
  printf '%-12s %8sM %8sM %8sM %8sM %9s %6sM %10s %10s\n' "$cfg" "${SPIKE_PK[$cfg]}" \
    "${SPIKE_10[$cfg]}" "${WAVE_PK[$cfg]}" "${WAVE_10[$cfg]}" "$(median ${IOPS[$cfg]})" \
    "${RSS4K[$cfg]}" "$(median ${RD[$cfg]})" "$(median ${WR[$cfg]})"
done
echo "(nbdmgrd RSS in MiB: pk = VmHWM, 10s = VmRSS 10 s after the spike with all $N"
echo " connections open; the export holds 32 MiB. Speed: medians of $ROUNDS rounds.)"
