#!/usr/bin/env bash
# Data-plane benchmark: nbdmgrd vs nbdkit (memory backends), same fio and
# nbdcopy work against both in one run, alternating servers every round.
# Prints one table of medians and the ratio nbdmgrd/nbdkit.
#
# Usage: tests/bench/dataplane.sh [BUILD_DIR]   (env: ROUNDS=3 SECONDS_PER_JOB=5)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
NBDMGRD=$BUILD/daemon/nbdmgrd
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_JOB:-5}
# shellcheck source=lib.sh
. "$HERE/lib.sh"

WORK=$(mktemp -d)
trap 'kill $MGR_PID $KIT_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

MGR_PORT=$(free_port); KIT_PORT=$(free_port)
"$NBDMGRD" --log-level warn --nbd-listen "tcp:127.0.0.1:$MGR_PORT" \
  --nbd-listen "unix:$WORK/mgr.sock" \
  --export name=bench,backend=memory,size=1GiB ${NBDMGR_EXTRA:-} &
MGR_PID=$!
nbdkit --exit-with-parent -f -i 127.0.0.1 -p "$KIT_PORT" memory 1G &
KIT_PID_TCP=$!
nbdkit --exit-with-parent -f -U "$WORK/kit.sock" memory 1G &
KIT_PID="$KIT_PID_TCP $!"
wait_for "$WORK/mgr.sock"; wait_for "$MGR_PORT"; wait_for "$WORK/kit.sock"; wait_for "$KIT_PORT"

uri() {  # uri SERVER TRANSPORT
  case "$1/$2" in
    nbdmgrd/unix) echo "nbd+unix:///bench?socket=$WORK/mgr.sock" ;;
    nbdmgrd/tcp) echo "nbd://127.0.0.1:$MGR_PORT/bench" ;;
    nbdkit/unix) echo "nbd+unix:///?socket=$WORK/kit.sock" ;;
    nbdkit/tcp) echo "nbd://127.0.0.1:$KIT_PORT/" ;;
  esac
}

# Prefill both disks with random data (first writes to a fresh nbdkit disk
# are much slower than rewrites; nbdcopy skips holes).
SRC_IMG=$WORK/src.img
head -c 1G /dev/urandom > "$SRC_IMG"
for s in nbdmgrd nbdkit; do
  nbdcopy --no-extents -C 4 -T 4 "$SRC_IMG" "$(uri $s unix)"
done

bench_matrix nbdmgrd nbdkit
