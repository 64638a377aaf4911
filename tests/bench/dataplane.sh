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
head -c 1G /dev/urandom > "$WORK/src.img"
for s in nbdmgrd nbdkit; do
  nbdcopy --no-extents -C 4 -T 4 "$WORK/src.img" "$(uri $s unix)"
done

JOBS=("seq read 1MiB qd8|read 1M 8" "seq write 1MiB qd8|write 1M 8"
      "rand read 4KiB qd32|randread 4k 32" "rand write 4KiB qd32|randwrite 4k 32")
declare -A R
for round in $(seq 1 "$ROUNDS"); do
  order=(nbdmgrd nbdkit); [ $((round % 2)) -eq 0 ] && order=(nbdkit nbdmgrd)
  for t in unix tcp; do
    for job in "${JOBS[@]}"; do
      name=${job%%|*}; read -r rw bs qd <<<"${job#*|}"
      for s in "${order[@]}"; do
        R["$t|$name|$s"]+=" $(fio_mbps "$(uri $s $t)" "$rw" "$bs" "$qd" "$SECS")"
      done
    done
    for s in "${order[@]}"; do
      sec=$(seconds nbdcopy --no-extents "$WORK/src.img" "$(uri $s $t)")
      R["$t|nbdcopy 1GiB file->nbd|$s"]+=" $($PY -c "print(round(1073.741824/$sec,1))")"
      sec=$(seconds nbdcopy --no-extents "$(uri $s $t)" null:)
      R["$t|nbdcopy 1GiB nbd->null|$s"]+=" $($PY -c "print(round(1073.741824/$sec,1))")"
    done
  done
  echo "round $round done" >&2
done

printf '\n%-6s %-26s %12s %12s %7s\n' transport job "nbdmgrd MB/s" "nbdkit MB/s" ratio
for t in unix tcp; do
  for name in "seq read 1MiB qd8" "seq write 1MiB qd8" "rand read 4KiB qd32" \
              "rand write 4KiB qd32" "nbdcopy 1GiB file->nbd" "nbdcopy 1GiB nbd->null"; do
    # shellcheck disable=SC2086
    m=$(median ${R["$t|$name|nbdmgrd"]}); k=$(median ${R["$t|$name|nbdkit"]})
    printf '%-6s %-26s %12s %12s %7s\n' "$t" "$name" "$m" "$k" \
      "$($PY -c "print(f'{$m/$k:.2f}')")"
  done
done
echo "(medians of $ROUNDS rounds, ${SECS}s per fio job; $(nproc) cores)"
