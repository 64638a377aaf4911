#!/usr/bin/env bash
# QoS benchmark (issue 19): how exactly limits hold, and what a saturated
# limited export costs an unlimited neighbour.
#
# Accuracy: fio (randread 4 KiB qd32 for IOPS limits, read 1 MiB qd8 for
# bandwidth limits, 4 connections each) against exports limited to 1k and
# 10k IOPS and 50 and 500 MiB/s, on nbdmgrd (memory exports, default
# bursts of a tenth of a second) and, as the peer, qemu-storage-daemon
# with the same limits in throttle groups (a file in the page cache behind
# a throttle node). Prints medians of measured / limit (target: within 5%).
#
# Neighbour: fio randread 4 KiB qd32 against an unlimited export alone,
# then while 4 more connections saturate a limited export on the same
# daemon (1k IOPS at qd32 each, or 50 MiB/s with 1 MiB reads); prints
# medians and with / without (target >= 0.95). The order alternates every
# round.
#
# Group fairness: two exports in one group limited to 2k IOPS, one read by
# 4 connections and one by 1 (randread 4 KiB qd8 each), at once; prints the
# single-connection export's share (a fair group by export: 0.5; by
# connection it would be 0.2) and the total / limit, against a qsd throttle
# group with the same two members.
#
# The per-request cost of the limiter check is a micro-benchmark:
# build/tests/bench_qos.
#
# Usage: tests/bench/qos.sh [BUILD_DIR]   env: ROUNDS=3 SECONDS_PER_JOB=10
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
BUILD=$(cd "$BUILD" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_JOB:-10}
NBDMGRD=$BUILD/daemon/nbdmgrd
WORK=$(mktemp -d /var/tmp/nbdmgr-qosbench-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

MiB=$((1 << 20))
SIZE=1G
head -c 1G /dev/urandom >"$WORK/data.img"

"$NBDMGRD" --log-level warn --nbd-listen "unix:$WORK/nbdmgr.sock" \
  --metrics-listen none --control-listen none --state-dir none \
  --export "name=iops1k,backend=memory,size=$SIZE,iops=1000" \
  --export "name=iops10k,backend=memory,size=$SIZE,iops=10000" \
  --export "name=bw50,backend=memory,size=$SIZE,bandwidth=50MiB" \
  --export "name=bw500,backend=memory,size=$SIZE,bandwidth=500MiB" \
  --export "name=free,backend=memory,size=$SIZE" \
  --export "name=noisy-iops,backend=memory,size=$SIZE,iops=1000" \
  --export "name=noisy-bw,backend=memory,size=$SIZE,bandwidth=50MiB" \
  --qos-group "name=shared,iops=2000" \
  --export "name=grp-a,backend=memory,size=$SIZE,qos-group=shared" \
  --export "name=grp-b,backend=memory,size=$SIZE,qos-group=shared" >/dev/null &
PIDS+=($!)

qsd_args=()
for spec in iops1k:x-iops-total=1000 iops10k:x-iops-total=10000 \
            bw50:x-bps-total=$((50 * MiB)) bw500:x-bps-total=$((500 * MiB)); do
  name=${spec%%:*}
  qsd_args+=(--object "throttle-group,id=tg-$name,${spec#*:}"
             --blockdev "driver=file,node-name=f-$name,filename=$WORK/data.img,read-only=on"
             --blockdev "driver=throttle,node-name=t-$name,throttle-group=tg-$name,file=f-$name,read-only=on"
             --export "type=nbd,id=e-$name,node-name=t-$name,name=$name")
done
qsd_args+=(--object "throttle-group,id=tg-shared,x-iops-total=2000")
for name in grp-a grp-b; do
  qsd_args+=(--blockdev "driver=file,node-name=f-$name,filename=$WORK/data.img,read-only=on"
             --blockdev "driver=throttle,node-name=t-$name,throttle-group=tg-shared,file=f-$name,read-only=on"
             --export "type=nbd,id=e-$name,node-name=t-$name,name=$name")
done
qemu-storage-daemon --nbd-server "addr.type=unix,addr.path=$WORK/qsd.sock" \
  "${qsd_args[@]}" >/dev/null 2>&1 &
PIDS+=($!)
wait_for "$WORK/nbdmgr.sock"
wait_for "$WORK/qsd.sock"
cat "$WORK/data.img" >/dev/null  # in the page cache for qsd

# median_raw VALUES...: the median, unrounded.
median_raw() { $PY -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

uri() { echo "nbd+unix:///$2?socket=$WORK/$1.sock"; }

# fio_total URI RW BS QD JOBS SECONDS UNIT: IOPS or bytes/s of all jobs.
fio_total() {
  fio --name=bench --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" \
      --iodepth="$4" --numjobs="$5" --size=1G --time_based --runtime="$6" \
      --group_reporting --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    $PY -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; u=sys.argv[1]
print(round(j["read"]["iops"]+j["write"]["iops"]) if u=="iops" else j["read"]["bw_bytes"]+j["write"]["bw_bytes"])' "$7"
}

declare -A R
rows=("iops1k|randread 4k 32 iops 1000" "iops10k|randread 4k 32 iops 10000"
      "bw50|read 1M 8 bytes $((50 * MiB))" "bw500|read 1M 8 bytes $((500 * MiB))")
for round in $(seq 1 "$ROUNDS"); do
  order=(nbdmgr qsd); [ $((round % 2)) -eq 0 ] && order=(qsd nbdmgr)
  for row in "${rows[@]}"; do
    name=${row%%|*}; read -r rw bs qd unit limit <<<"${row#*|}"
    for s in "${order[@]}"; do
      v=$(fio_total "$(uri "$s" "$name")" "$rw" "$bs" "$qd" 4 "$SECS" "$unit")
      R[$name,$s]+="$($PY -c "print($v/$limit)") "
    done
  done
  # Group fairness: 4 connections on grp-a, 1 on grp-b, at once.
  for s in "${order[@]}"; do
    fio_total "$(uri "$s" grp-a)" randread 4k 8 4 "$SECS" iops >"$WORK/grp-a" &
    bg=$!
    b=$(fio_total "$(uri "$s" grp-b)" randread 4k 8 1 "$SECS" iops)
    wait "$bg"
    a=$(cat "$WORK/grp-a")
    R[share,$s]+="$($PY -c "print($b/($a+$b))") "
    R[total,$s]+="$($PY -c "print(($a+$b)/2000)") "
  done
  # The neighbour: alone, then beside a saturated limited export.
  for noisy in noisy-iops noisy-bw; do
    for mode in alone beside; do
      [ $((round % 2)) -eq 0 ] && mode=$([ "$mode" = alone ] && echo beside || echo alone)
      if [ "$mode" = beside ]; then
        if [ "$noisy" = noisy-iops ]; then
          fio_total "$(uri nbdmgr "$noisy")" randread 4k 32 4 $((SECS + 2)) iops >/dev/null &
        else
          fio_total "$(uri nbdmgr "$noisy")" read 1M 8 4 $((SECS + 2)) bytes >/dev/null &
        fi
        bg=$!
        sleep 1
      fi
      v=$(fio_total "$(uri nbdmgr free)" randread 4k 32 1 "$SECS" iops)
      R[$noisy,$mode]+="$v "
      if [ "$mode" = beside ]; then wait "$bg"; fi
    done
  done
done

echo "Limit accuracy: measured / limit, medians of $ROUNDS rounds of ${SECS}s (4 connections)"
printf '%-10s %-22s %10s %10s\n' row work nbdmgr qsd
for row in "${rows[@]}"; do
  name=${row%%|*}; read -r rw bs qd unit limit <<<"${row#*|}"
  # shellcheck disable=SC2086
  printf '%-10s %-22s %10.3f %10.3f\n' "$name" "$rw $bs qd$qd" \
    "$(median_raw ${R[$name,nbdmgr]})" "$(median_raw ${R[$name,qsd]})"
done
echo
echo "Group fairness: 2k IOPS group, export A with 4 connections, B with 1 (randread 4k qd8)"
printf '%-34s %10s %10s\n' measure nbdmgr qsd
# shellcheck disable=SC2086
printf '%-34s %10.3f %10.3f\n' "B's share (fair by export: 0.5)" \
  "$(median_raw ${R[share,nbdmgr]})" "$(median_raw ${R[share,qsd]})"
# shellcheck disable=SC2086
printf '%-34s %10.3f %10.3f\n' "A + B / limit" \
  "$(median_raw ${R[total,nbdmgr]})" "$(median_raw ${R[total,qsd]})"
echo
echo "Unlimited neighbour: randread 4k qd32 IOPS, alone and beside a saturated limited export"
printf '%-28s %10s %10s %8s\n' neighbour alone beside ratio
for noisy in noisy-iops noisy-bw; do
  # shellcheck disable=SC2086
  a=$(median ${R[$noisy,alone]}); b=$(median ${R[$noisy,beside]})
  label=$([ "$noisy" = noisy-iops ] && echo "1k IOPS, 4 x qd32" || echo "50 MiB/s, 4 x qd8 1MiB")
  printf '%-28s %10.0f %10.0f %8.3f\n' "$label" "$a" "$b" "$($PY -c "print($b/$a)")"
done
