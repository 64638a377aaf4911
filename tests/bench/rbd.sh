#!/usr/bin/env bash
# RBD benchmark (issue 17): one image in a throwaway Ceph cluster (1 mon, 1
# memstore OSD on 127.0.0.1, tests/interop/ceph_cluster.py), served over NBD
# on a Unix socket by nbdmgrd (backend=rbd) and by qemu-storage-daemon's rbd
# driver, in alternating order every round, plus the raw librbd figure from
# fio's own rbd engine as the ceiling. Prints medians (IOPS for 4 KiB rows,
# MB/s for 1 MiB rows) and the ratios nbdmgrd/qsd and nbdmgrd/raw.
#
# Usage: tests/bench/rbd.sh [BUILD_DIR]
#   env: ROUNDS=3 SECONDS_PER_JOB=5 IMAGE_SIZE=512M
#        ROWS=REGEX   rows: randread-4k randwrite-4k read-1m write-1m
#                     (fio, qd32 for 4 KiB, qd8 for 1 MiB, one job)
# Needs: the Ceph packages (deploy/install-deps.sh), fio with the rbd engine,
# and for the qsd column qemu-storage-daemon (qemu-system-common) with
# qemu-block-extra; without them that column is skipped with a note.
# Both cores run the OSD, the server and fio at once: absolute numbers are
# the machine's, the ratios are the result.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
BUILD=$(cd "$BUILD" && pwd)
if [ -z "${NBDMGR_CEPH_CONF:-}" ]; then  # start a cluster around ourselves
  exec /usr/bin/python3 "$HERE/../interop/with_ceph.py" -- bash "$0" "$BUILD"
fi
# shellcheck source=lib.sh
. "$HERE/lib.sh"
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_JOB:-5}
SIZE=${IMAGE_SIZE:-512M}
ROWS=${ROWS:-.}
NBDMGRD=$BUILD/daemon/nbdmgrd
[ -x "$NBDMGRD" ] || { echo "no $NBDMGRD" >&2; exit 2; }
CONF=$NBDMGR_CEPH_CONF
export CEPH_CONF=$CONF  # fio's rbd engine reads the default conf
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  [ ${#PIDS[@]} -gt 0 ] && kill "${PIDS[@]}" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

QSD=1
if ! command -v qemu-storage-daemon >/dev/null ||
   [ ! -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ]; then
  echo "note: no qemu-storage-daemon with the rbd driver (qemu-system-common," \
       "qemu-block-extra): qsd column skipped" >&2
  QSD=0
fi

rbd -c "$CONF" create --size "$SIZE" rbd/bench
# Write the whole image once, so reads hit objects that exist.
fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench \
    --rw=write --bs=4m --iodepth=8 --size="$SIZE" >/dev/null 2>&1 ||
  { echo "fio's rbd engine failed (CEPH_CONF=$CONF)" >&2; exit 1; }

start_server() {  # start_server NAME: serves rbd/bench on $WORK/NAME.sock
  case $1 in
    nbdmgrd)
      "$NBDMGRD" --log-level warn --nbd-listen "unix:$WORK/nbdmgrd.sock" \
        --metrics-listen none --control-listen none --state-dir none \
        --export "name=bench,backend=rbd,pool=rbd,image=bench,ceph-conf=$CONF,ceph-user=admin" \
        >/dev/null &
      ;;
    qsd)
      qemu-storage-daemon \
        --blockdev "driver=rbd,node-name=r,pool=rbd,image=bench,conf=$CONF,user=admin,cache.direct=on" \
        --nbd-server "addr.type=unix,addr.path=$WORK/qsd.sock" \
        --export type=nbd,id=e,node-name=r,name=bench,writable=on >/dev/null 2>&1 &
      ;;
  esac
  PIDS+=($!)
  SERVER_PID=$!
  wait_uri "nbd+unix:///bench?socket=$WORK/$1.sock"
}

stop_server() { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true; }

row_args() {  # row_args ROW: fio's rw, bs, iodepth
  case $1 in
    randread-4k) echo "randread 4k 32" ;;
    randwrite-4k) echo "randwrite 4k 32" ;;
    read-1m) echo "read 1m 8" ;;
    write-1m) echo "write 1m 8" ;;
  esac
}

run_fio() {  # run_fio ROW ENGINE-ARGS...: prints IOPS (4k) or MB/s (1m)
  local row=$1; shift
  read -r rw bs qd <<<"$(row_args "$row")"
  fio --name=b "$@" --rw="$rw" --bs="$bs" --iodepth="$qd" --size="$SIZE" \
      --time_based --runtime="$SECS" --output-format=json 2>"$WORK/fio.err" |
    sed -n '/^{/,$p' | $PY -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
k = "read" if j["read"]["io_bytes"] else "write"
print(j[k]["iops"] if sys.argv[1].endswith("4k") else j[k]["bw_bytes"] / 1e6)' "$row" ||
    { echo "fio $row $* failed: $(tail -n 3 "$WORK/fio.err")" >&2; echo nan; }
}

ALL_ROWS=()
for r in randread-4k randwrite-4k read-1m write-1m; do
  [[ $r =~ $ROWS ]] && ALL_ROWS+=("$r")
done
SERVERS=(nbdmgrd)
[ "$QSD" = 1 ] && SERVERS+=(qsd)
declare -A RES
for round in $(seq 1 "$ROUNDS"); do
  order=("${SERVERS[@]}")
  if [ $((round % 2)) = 0 ]; then order=(); for ((i=${#SERVERS[@]}-1; i>=0; i--)); do order+=("${SERVERS[$i]}"); done; fi
  for s in "${order[@]}"; do
    start_server "$s"
    for r in "${ALL_ROWS[@]}"; do
      RES[$s,$r]+=" $(run_fio "$r" --ioengine=nbd --uri="nbd+unix:///bench?socket=$WORK/$s.sock")"
    done
    stop_server
  done
  for r in "${ALL_ROWS[@]}"; do
    RES[raw,$r]+=" $(run_fio "$r" --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench)"
  done
  echo "round $round done ($(date +%T))" >&2
done

printf '\n%-14s %-5s %10s %10s %7s %10s %7s\n' row unit nbdmgrd qsd ratio raw ratio
for r in "${ALL_ROWS[@]}"; do
  unit=IOPS; [[ $r == *1m ]] && unit=MB/s
  # shellcheck disable=SC2086
  m=$(median ${RES[nbdmgrd,$r]}); raw=$(median ${RES[raw,$r]})
  q=nan; [ "$QSD" = 1 ] && q=$(median ${RES[qsd,$r]})
  $PY -c 'import sys
r,u,m,q,w=sys.argv[1:]; m,q,w=float(m),float(q),float(w)
rq = f"{m/q:7.3f}" if q==q and q>0 else "      -"
print(f"{r:<14} {u:<5} {m:10.1f} {q:10.1f} {rq} {w:10.1f} {m/w:7.3f}")' "$r" "$unit" "$m" "$q" "$raw"
done
echo "(medians of $ROUNDS rounds, ${SECS}s per fio job, image $SIZE on a memstore OSD; $(nproc) cores shared by OSD, server and fio)"
