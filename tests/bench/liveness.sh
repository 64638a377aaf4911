#!/usr/bin/env bash
# Liveness benchmark (issue 13): buffer caps are tried, never waited for, and
# stalled clients cannot starve the others. Prints two tables; no thresholds
# are enforced (the targets are printed next to the numbers).
#
# Table 1, "N-connection spike" (1 GiB export, buffer-strategy pool), one
# row per daemon cap: default (auto), --memory-cap 256MiB, --memory-cap none:
#   spike   N connections (384): one 32 MiB WRITE each at the same moment,
#           then one 32 MiB READ each, then idle with the connections open:
#           daemon peak RSS (VmHWM of a fresh daemon), RSS 10 s later
#           (first round), throughput (bytes moved / elapsed)
#   waves   the same in waves of 16 connections, every byte verified
# Throughput is compared with the uncapped run (target >= 0.95); targets for
# memory: peak <= cap + 96 MiB, settled <= 96 MiB.
#
# Table 2, "fio beside stalled clients": one daemon, exports a and b; fio
# (1 MiB, qd8, 2 jobs, 5 s; read and randrw) on a, alone and with 64 stalled
# connections on b (half send a 32 MiB WRITE header plus 16 bytes of payload
# and stop, half send four 32 MiB READs and never read the replies;
# --stall-timeout 5m keeps them for the whole run). Alone/with alternate
# every round; medians. Target: with/alone >= 0.90.
#
# Usage: tests/bench/liveness.sh [BUILD_DIR]
#   env: CONNECTIONS=384 ROUNDS=3 TABLES="1 2" BACKEND=file|memory (memory exports lend
#        their pages to READs, so only their WRITEs take buffers; a file
#        export's READs take them too). The uncapped spike holds about
#        CONNECTIONS x 32 MiB (12 GiB at 384).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
NBDMGRD=$BUILD/daemon/nbdmgrd
N=${CONNECTIONS:-384}
ROUNDS=${ROUNDS:-3}
BACKEND=${BACKEND:-file}
STALLED=${STALLED:-64}
FIO_SECS=5
CONFIGS=(auto 256MiB none)
MiB=1048576
# shellcheck source=lib.sh
. "$HERE/lib.sh"
ulimit -n 8192
WORK=$(mktemp -d)
declare -A PIDS METRICS
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

backend_spec() {  # backend_spec NAME
  case $BACKEND in
    memory) echo "backend=memory,size=1GiB" ;;
    file) echo "backend=file,path=$WORK/$1.img,size=1GiB" ;;
    *) echo "BACKEND must be memory or file" >&2; exit 2 ;;
  esac
}
# start ID EXPORT_NAMES FLAGS...: a fresh daemon on unix:$WORK/ID.sock
# serving the named exports; PIDS[ID], METRICS[ID] (host:port).
start() {
  local id=$1 names=$2 n; shift 2
  local exports=()
  for n in $names; do
    exports+=(--export "name=$n,$(backend_spec "$id-$n"),buffer-strategy=pool")
  done
  rm -f "$WORK/$id.sock" "$WORK/$id.ready"
  "$NBDMGRD" --log-level warn --nbd-listen "unix:$WORK/$id.sock" \
    --metrics-listen 127.0.0.1:0 --control-listen none --state-dir none \
    --ready-file "$WORK/$id.ready" "${exports[@]}" "$@" &
  PIDS[$id]=$!
  wait_for "$WORK/$id.sock"
  for _ in $(seq 1 50); do
    grep -q '^metrics=' "$WORK/$id.ready" 2>/dev/null && break; sleep 0.1
  done
  METRICS[$id]=$(sed -n 's/^metrics=//p' "$WORK/$id.ready")
}
stop() { kill "${PIDS[$1]}"; wait "${PIDS[$1]}" 2>/dev/null || true; unset "PIDS[$1]"; }
uri() { echo "nbd+unix:///$2?socket=$WORK/$1.sock"; }  # uri ID EXPORT
mib() { $PY -c "print(round($1/$MiB))"; }
rss() { awk '/^VmRSS/{print $2*1024}' "/proc/${PIDS[$1]}/status"; }
field() { $PY -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
# metric ID NAME: the value of an unlabelled (or fully spelled) sample.
metric() {
  { curl -s "http://${METRICS[$1]}/metrics" || true; } |
    awk -v n="$2" '$1==n {print $2; found=1} END {if (!found) print "nan"}'
}
ratio() { $PY -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('nan' if a!=a or b!=b or b==0 else f'{a/b:.3f}')" "$1" "$2"; }
fio_mbps_jobs() {  # fio_mbps_jobs URI RW: MB/s (read+write), 1 MiB qd8 x2 jobs
  fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs=1M --iodepth=8 \
      --numjobs=2 --thread --group_reporting --size=1G --time_based \
      --runtime="$FIO_SECS" --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    $PY -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; r,w=j["read"],j["write"]; print(round((r["bw_bytes"]+w["bw_bytes"])/1e6))'
}
cap_flag() {  # the uncapped baseline also lifts the per-connection limit
  case $1 in
    auto) ;;
    none) echo "--memory-cap none --connection-memory none" ;;
    *) echo "--memory-cap $1" ;;
  esac
}
TABLES=${TABLES:-1 2}
want() { [[ " $TABLES " == *" $1 "* ]]; }

avail_mib=$(awk '/^MemAvailable/{printf "%d", $2/1024}' /proc/meminfo)
if [ "$avail_mib" -lt $((N * 32 + 2048)) ]; then
  echo "warning: $avail_mib MiB available; the uncapped spike needs ~$((N * 32)) MiB" >&2
fi

# ---------------------------------------------------------------- table 1
declare -A CAP SP_PK SP_10 WV_PK SP_MBPS WV_MBPS
want 1 && {
echo "spike phase ($N connections, $ROUNDS rounds, backend $BACKEND)..." >&2
for round in $(seq 1 "$ROUNDS"); do
  order=("${CONFIGS[@]}")
  [ $((round % 2)) -eq 0 ] && mapfile -t order < <(printf '%s\n' "${CONFIGS[@]}" | tac)
  for cfg in "${order[@]}"; do
    settle=0; [ "$round" = 1 ] && settle=10
    # shellcheck disable=SC2046
    start "s-$cfg" b $(cap_flag "$cfg")
    CAP[$cfg]=$(metric "s-$cfg" nbdmgr_daemon_buffer_cap_bytes)
    s=$($PY "$HERE/nbdload.py" spike "$(uri "s-$cfg" b)" --connections "$N" \
          --pid "${PIDS[s-$cfg]}" --settle "$settle")
    stop "s-$cfg"
    # shellcheck disable=SC2046
    start "w-$cfg" b $(cap_flag "$cfg")
    w=$($PY "$HERE/nbdload.py" spike "$(uri "w-$cfg" b)" --connections "$N" --wave 16 \
          --pid "${PIDS[w-$cfg]}" --settle 0)
    stop "w-$cfg"
    [ "$(field "$w" verified_bytes)" = $((N * 32 * MiB)) ] ||
      { echo "waves verified $(field "$w" verified_bytes) bytes" >&2; exit 1; }
    SP_PK[$cfg]+=" $(mib "$(field "$s" peak_rss)")"
    [ "$round" = 1 ] && SP_10[$cfg]=$(mib "$(field "$s" settled_rss)")
    WV_PK[$cfg]+=" $(mib "$(field "$w" peak_rss)")"
    SP_MBPS[$cfg]+=" $($PY -c "print(round(2*$N*32*$MiB/1e6/$(field "$s" seconds)))")"
    WV_MBPS[$cfg]+=" $($PY -c "print(round(2*$N*32*$MiB/1e6/$(field "$w" seconds)))")"
    echo "  round $round $cfg: spike $(field "$s" seconds)s, waves $(field "$w" seconds)s" >&2
  done
done
}

# ---------------------------------------------------------------- table 2
echo "stalled-clients phase ($STALLED stalled, $ROUNDS rounds)..." >&2
start fio "a b" --stall-timeout 5m
for n in a b; do  # real data, so READs are not answered from holes
  fio --name=fill --ioengine=nbd --uri="$(uri fio "$n")" --rw=write --bs=1M --iodepth=8 \
      --size=1G >/dev/null 2>&1
done
WORKLOADS=(read randrw)
declare -A F_ALONE F_WITH
ST_RSS="" ST_GAUGE="" IDLE_RSS=""
stall_start() {
  rm -f "$WORK/stall.ready"
  $PY "$HERE/stall_clients.py" "$WORK/fio.sock" b --connections "$STALLED" \
    --ready "$WORK/stall.ready" --hold 900 &
  PIDS[stall]=$!
  for _ in $(seq 1 300); do
    [ -s "$WORK/stall.ready" ] && break
    kill -0 "${PIDS[stall]}" 2>/dev/null || { echo "stall_clients.py failed" >&2; exit 1; }
    sleep 0.1
  done
  [ -s "$WORK/stall.ready" ] || { echo "stalled clients never got ready" >&2; exit 1; }
  sleep 1  # let the daemon take in what they sent
}
stall_stop() {
  kill "${PIDS[stall]}"; wait "${PIDS[stall]}" 2>/dev/null || true; unset "PIDS[stall]"
  for _ in $(seq 1 100); do  # until the daemon has let go of their buffers
    [ "$(metric fio nbdmgr_daemon_buffer_bytes_in_use)" = 0 ] && break; sleep 0.1
  done
}
for round in $(seq 1 "$ROUNDS"); do
  order=(alone with); [ $((round % 2)) -eq 0 ] && order=(with alone)
  for mode in "${order[@]}"; do
    if [ "$mode" = with ]; then
      stall_start
      ST_RSS+=" $(mib "$(rss fio)")"
      ST_GAUGE+=" $(mib "$(metric fio nbdmgr_daemon_buffer_bytes_in_use)")"
    else
      IDLE_RSS+=" $(mib "$(rss fio)")"
    fi
    for wl in "${WORKLOADS[@]}"; do
      m=$(fio_mbps_jobs "$(uri fio a)" "$wl")
      if [ "$mode" = with ]; then F_WITH[$wl]+=" $m"; else F_ALONE[$wl]+=" $m"; fi
    done
    [ "$mode" = with ] && stall_stop
  done
  echo "  round $round done" >&2
done
STREAMED_A=$(metric fio 'nbdmgr_buffer_streamed_requests_total{export="a"}')
STALL_P=$(metric fio 'nbdmgr_limit_refusals_total{reason="stall_payload"}')
STALL_R=$(metric fio 'nbdmgr_limit_refusals_total{reason="stall_replies"}')
FIO_CAP=$(metric fio nbdmgr_daemon_buffer_cap_bytes)
stop fio

# ---------------------------------------------------------------- output
label() { case $1 in auto) echo "default (auto)" ;; none) echo "none (uncapped)" ;; *) echo "$1" ;; esac; }
want 1 && {
# shellcheck disable=SC2086
base_sp=$(median ${SP_MBPS[none]})
# shellcheck disable=SC2086
base_wv=$(median ${WV_MBPS[none]})
printf '\nTable 1: %s-connection spike (backend %s, pool, 32 MiB WRITE + READ each)\n' "$N" "$BACKEND"
printf '%-16s %7s %15s %10s %9s %9s %7s %9s %7s\n' config "cap" "spike pk/tgt" \
  "spike 10s" "waves pk" "spike MB/s" ratio "waves MB/s" ratio
for cfg in "${CONFIGS[@]}"; do
  cap=${CAP[$cfg]}
  if [ "$cap" = nan ] || [ "$cap" = 0 ]; then capm=none; tgt="-"
  else capm="$(mib "$cap")M"; tgt="$(( $(mib "$cap") + 96 ))M"; fi
  # shellcheck disable=SC2086
  sp=$(median ${SP_MBPS[$cfg]})
  # shellcheck disable=SC2086
  wv=$(median ${WV_MBPS[$cfg]})
  # shellcheck disable=SC2086
  printf '%-16s %7s %15s %10s %9s %9s %7s %9s %7s\n' "$(label "$cfg")" "$capm" \
    "$(median ${SP_PK[$cfg]})M/$tgt" "${SP_10[$cfg]}M" "$(median ${WV_PK[$cfg]})M" \
    "$sp" "$(ratio "$sp" "$base_sp")" "$wv" "$(ratio "$wv" "$base_wv")"
done
echo "(nbdmgrd RSS in MiB: pk = VmHWM of a fresh daemon, median of $ROUNDS rounds; 10s ="
echo " VmRSS 10 s after the spike with all $N connections open, first round. MB/s ="
echo " 2 x $N x 32 MiB / elapsed, medians; ratio = vs uncapped. Targets: peak <= cap"
echo " + 96 MiB, 10s <= 96 MiB, ratio >= 0.95. Waves time includes client-side verify.)"
}

printf '\nTable 2: fio on export a beside %s stalled clients on export b (backend %s, cap %s)\n' \
  "$STALLED" "$BACKEND" "$( [ "$FIO_CAP" = nan ] || [ "$FIO_CAP" = 0 ] && echo none || echo "$(mib "$FIO_CAP")M")"
printf '%-26s %10s %12s %7s %7s\n' workload "alone MB/s" "stalled MB/s" ratio target
for wl in "${WORKLOADS[@]}"; do
  # shellcheck disable=SC2086
  a=$(median ${F_ALONE[$wl]})
  # shellcheck disable=SC2086
  b=$(median ${F_WITH[$wl]})
  printf '%-26s %10s %12s %7s %7s\n' "$wl 1MiB qd8 x2 jobs" "$a" "$b" "$(ratio "$b" "$a")" ">=0.90"
done
# shellcheck disable=SC2086
echo "daemon RSS: $(median $IDLE_RSS) MiB before the stalled clients, $(median $ST_RSS) MiB with them"
# shellcheck disable=SC2086
echo "nbdmgr_daemon_buffer_bytes_in_use with them: $(median $ST_GAUGE) MiB"
echo "export a requests streamed through the reserve (all rounds): $STREAMED_A"
echo "stall refusals (stall timeout 5m): stall_payload=$STALL_P stall_replies=$STALL_R"
echo "(medians of $ROUNDS rounds, ${FIO_SECS}s per fio run; $(nproc) cores)"
