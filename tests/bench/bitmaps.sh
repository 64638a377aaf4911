#!/usr/bin/env bash
# Dirty-bitmap cost (issue 18): write throughput of one export with no
# bitmap and with one active bitmap, on the same daemon and export, in
# alternating order every round. The bitmap is added (and cleared) before
# each "with" job and removed before each "without" job, so both see the
# same export state; fio over a Unix socket. Prints medians and the ratio
# with/without (the target: >= 0.97, i.e. at most 3% lost).
#
# Rows: memory and file exports, fio randwrite 4 KiB qd32 and sequential
# write 1 MiB qd8, at the default granularity (64 KiB); "randwrite-4k/4k"
# uses a 4 KiB granularity, where nearly every write dirties a new block.
#
# Usage: tests/bench/bitmaps.sh [BUILD_DIR]
#   env: ROUNDS=5 SECONDS_PER_JOB=5 ROWS=REGEX
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
BUILD=$(cd "$BUILD" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
ROUNDS=${ROUNDS:-5}
SECS=${SECONDS_PER_JOB:-5}
ROWS=${ROWS:-.}
NBDMGRD=$BUILD/daemon/nbdmgrd
NBDCTL=$BUILD/cli/nbdctl
WORK=$(mktemp -d)
DAEMON=
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

"$NBDMGRD" --log-level warn --nbd-listen "unix:$WORK/nbd.sock" \
  --control-listen "unix:$WORK/control.sock" --metrics-listen none \
  --state-dir "$WORK/state" \
  --export "name=mem,backend=memory,size=4GiB" \
  --export "name=file,backend=file,path=$WORK/file.img,size=4GiB" >/dev/null &
DAEMON=$!
wait_for "$WORK/nbd.sock"
ctl() { "$NBDCTL" --control "unix:$WORK/control.sock" "$@" >/dev/null; }

# row: export rw bs qd granularity
declare -A ROW=(
  [mem/randwrite-4k]="mem randwrite 4k 32 64KiB"
  [mem/randwrite-4k/4k]="mem randwrite 4k 32 4KiB"
  [mem/write-1m]="mem write 1m 8 64KiB"
  [file/randwrite-4k]="file randwrite 4k 32 64KiB"
  [file/write-1m]="file write 1m 8 64KiB"
)
NAMES=()
for r in mem/randwrite-4k mem/randwrite-4k/4k mem/write-1m file/randwrite-4k file/write-1m; do
  [[ $r =~ $ROWS ]] && NAMES+=("$r")
done

run_job() {  # run_job ROW: IOPS (4k) or MB/s (1m)
  read -r e rw bs qd _ <<<"${ROW[$1]}"
  if [ "$bs" = 4k ]; then
    fio_iops "nbd+unix:///$e?socket=$WORK/nbd.sock" "$rw" "$bs" "$qd" "$SECS"
  else
    fio_mbps "nbd+unix:///$e?socket=$WORK/nbd.sock" "$rw" "$bs" "$qd" "$SECS"
  fi
}

declare -A RES
for round in $(seq 1 "$ROUNDS"); do
  order=(without with); [ $((round % 2)) = 0 ] && order=(with without)
  for r in "${NAMES[@]}"; do
    read -r e _ _ _ g <<<"${ROW[$r]}"
    for mode in "${order[@]}"; do
      if [ "$mode" = with ]; then
        ctl bitmap add "$e" bench --granularity "$g"
      fi
      RES[$mode,$r]+=" $(run_job "$r")"
      [ "$mode" = with ] && ctl bitmap remove "$e" bench
    done
  done
  echo "round $round done ($(date +%T))" >&2
done

printf '\n%-22s %-5s %10s %10s %7s\n' row unit without with ratio
for r in "${NAMES[@]}"; do
  unit=IOPS; [[ $r == *1m ]] && unit=MB/s
  # shellcheck disable=SC2086
  a=$(median ${RES[without,$r]}); b=$(median ${RES[with,$r]})
  $PY -c 'import sys
r,u,a,b=sys.argv[1:]; a,b=float(a),float(b)
print(f"{r:<22} {u:<5} {a:10.1f} {b:10.1f} {b/a:7.3f}")' "$r" "$unit" "$a" "$b"
done
echo "(medians of $ROUNDS rounds, ${SECS}s per fio job, 4 GiB exports, one active bitmap in the \"with\" column; $(nproc) cores shared by server and fio)"
