#!/usr/bin/env bash
# Overlay benchmark (issue 18): the same fio work against three servers of
# one 1 GiB base image, over Unix sockets, the servers' order alternating
# every round:
#   plain    nbdmgrd serving a copy of the base as a plain file export
#   overlay  nbdmgrd serving a fresh copy-on-write overlay on the base
#            (base=golden, 64 KiB clusters)
#   qsd      qemu-storage-daemon serving a fresh qcow2 overlay (64 KiB
#            clusters, backing file the base, cache.direct=off like ours)
# Rows: fio randread/randwrite 4 KiB qd32 and read/write 1 MiB qd8, then
# first-4k (4 KiB writes 64 KiB apart: each the first write of its cluster,
# a copy-up) and rewrite-4k (the same writes again). Prints medians and
# overlay/qsd, overlay/plain, and each server's rewrite/first ratio (the
# cost of a first write over a rewrite; target <= 2).
#
# Usage: tests/bench/overlays.sh [BUILD_DIR]   env: ROUNDS=5 SECONDS_PER_JOB=5
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
BUILD=$(cd "$BUILD" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
ROUNDS=${ROUNDS:-5}
SECS=${SECONDS_PER_JOB:-5}
NBDMGRD=$BUILD/daemon/nbdmgrd
WORK=$(mktemp -d /var/tmp/nbdmgr-ovbench-XXXXXX)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

head -c 1G /dev/urandom >"$WORK/base.img"
cp "$WORK/base.img" "$WORK/plain.img"
sync

start_server() {  # start_server NAME: serves export "d" on $WORK/NAME.sock
  rm -f "$WORK/ovl.ovl" "$WORK/ovl.qcow2"
  case $1 in
    plain)
      "$NBDMGRD" --log-level warn --nbd-listen "unix:$WORK/plain.sock" \
        --metrics-listen none --control-listen none --state-dir none \
        --export "name=d,backend=file,path=$WORK/plain.img" >/dev/null &
      ;;
    overlay)
      "$NBDMGRD" --log-level warn --nbd-listen "unix:$WORK/overlay.sock" \
        --metrics-listen none --control-listen none --state-dir none \
        --export "name=golden,backend=file,path=$WORK/base.img,read-only=true" \
        --export "name=d,backend=file,path=$WORK/ovl.ovl,base=golden" >/dev/null &
      ;;
    qsd)
      qemu-img create -q -f qcow2 -o cluster_size=65536 -b "$WORK/base.img" \
        -F raw "$WORK/ovl.qcow2"
      qemu-storage-daemon \
        --blockdev "driver=qcow2,node-name=o,file.driver=file,file.filename=$WORK/ovl.qcow2,file.aio=io_uring,cache.direct=off" \
        --nbd-server "addr.type=unix,addr.path=$WORK/qsd.sock" \
        --export type=nbd,id=e,node-name=o,name=d,writable=on >/dev/null 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  wait_for "$WORK/$1.sock"
}
stop_server() {
  kill "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  rm -f "$WORK"/*.sock
}

ROWS=(randread-4k read-1m randwrite-4k write-1m first-4k rewrite-4k)
job() {  # job ROW URI: IOPS (4k) or MB/s (1m)
  local uri=$2
  case $1 in
    randread-4k) fio_iops "$uri" randread 4k 32 "$SECS" ;;
    read-1m) fio_mbps "$uri" read 1m 8 "$SECS" ;;
    randwrite-4k) fio_iops "$uri" randwrite 4k 32 "$SECS" ;;
    write-1m) fio_mbps "$uri" write 1m 8 "$SECS" ;;
    first-4k | rewrite-4k)
      # 16384 writes 64 KiB apart over the whole GiB, then the same again.
      fio --name=b --ioengine=nbd --uri="$uri" --rw=write:60k --bs=4k \
          --iodepth=32 --size=1G --output-format=json 2>/dev/null |
        sed -n '/^{/,$p' |
        $PY -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'
      ;;
  esac
}

SERVERS=(plain overlay qsd)
declare -A RES
for round in $(seq 1 "$ROUNDS"); do
  order=("${SERVERS[@]}")
  [ $((round % 2)) = 0 ] && order=(qsd overlay plain)
  for s in "${order[@]}"; do
    start_server "$s"
    uri="nbd+unix:///d?socket=$WORK/$s.sock"
    # first-4k must see fresh clusters: run it before the random writes.
    for r in first-4k rewrite-4k randread-4k read-1m randwrite-4k write-1m; do
      RES[$s,$r]+=" $(job "$r" "$uri")"
    done
    stop_server
  done
  echo "round $round done ($(date +%T))" >&2
done

printf '\n%-13s %-5s %10s %10s %10s %8s %8s\n' row unit plain overlay qsd ov/qsd ov/plain
for r in "${ROWS[@]}"; do
  unit=IOPS; [[ $r == *1m ]] && unit=MB/s
  # shellcheck disable=SC2086
  p=$(median ${RES[plain,$r]}); o=$(median ${RES[overlay,$r]}); q=$(median ${RES[qsd,$r]})
  $PY -c 'import sys
r,u,p,o,q=sys.argv[1:]; p,o,q=float(p),float(o),float(q)
print(f"{r:<13} {u:<5} {p:10.1f} {o:10.1f} {q:10.1f} {o/q:8.3f} {o/p:8.3f}")' "$r" "$unit" "$p" "$o" "$q"
done
for s in overlay qsd; do
  # shellcheck disable=SC2086
  f=$(median ${RES[$s,first-4k]}); w=$(median ${RES[$s,rewrite-4k]})
  $PY -c 'import sys; s,f,w=sys.argv[1:]; print(f"{s}: a first write costs {float(w)/float(f):.2f}x a rewrite")' "$s" "$f" "$w"
done
echo "(medians of $ROUNDS rounds, ${SECS}s per timed job, 1 GiB base in the page cache; $(nproc) cores shared by server and fio)"
