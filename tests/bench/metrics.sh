#!/usr/bin/env bash
# Cost of metrics: two identical nbdmgrd (memory export), one counting every
# request (--request-stats on, the default) with /metrics scraped every
# second while it serves, one with --request-stats off and no metrics
# endpoint. Same fio and nbdcopy work against both, alternating every round;
# prints medians and the ratio on/off (1.00 = free).
#
# Usage: tests/bench/metrics.sh [BUILD_DIR]   (env: ROUNDS=5 SECONDS_PER_JOB=5)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
NBDMGRD=$BUILD/daemon/nbdmgrd
ROUNDS=${ROUNDS:-5}
SECS=${SECONDS_PER_JOB:-5}
# shellcheck source=lib.sh
. "$HERE/lib.sh"

WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" $SCRAPER 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
SCRAPER=

declare -A PORT SERVER_PID
for s in on off; do
  PORT[$s]=$(free_port)
  metrics=none; [ $s = on ] && metrics=127.0.0.1:0
  "$NBDMGRD" --log-level warn --control-listen none --state-dir none \
    --nbd-listen "tcp:127.0.0.1:${PORT[$s]}" --nbd-listen "unix:$WORK/$s.sock" \
    --metrics-listen $metrics --request-stats $s --ready-file "$WORK/$s.ready" \
    --export name=bench,backend=memory,size=1GiB &
  PIDS+=($!)
  SERVER_PID[$s]=$!
done
for s in on off; do wait_for "$WORK/$s.sock"; wait_for "${PORT[$s]}"; done
METRICS=$(sed -n 's/^metrics=//p' "$WORK/on.ready")

uri() {  # uri SERVER TRANSPORT
  case $2 in
    unix) echo "nbd+unix:///bench?socket=$WORK/$1.sock" ;;
    tcp) echo "nbd://127.0.0.1:${PORT[$1]}/bench" ;;
  esac
}
# While "on" serves, scrape it every second (Prometheus at a 1 s interval).
before_job() {
  [ "$1" = on ] || return 0
  (while curl -sf "http://$METRICS/metrics" >/dev/null; do sleep 1; done) &
  SCRAPER=$!
}
after_job() {
  [ "$1" = on ] || return 0
  kill $SCRAPER 2>/dev/null; wait $SCRAPER 2>/dev/null || true; SCRAPER=
}

SRC_IMG=$WORK/src.img
head -c 1G /dev/urandom > "$SRC_IMG"
for s in on off; do nbdcopy --no-extents -C 4 -T 4 "$SRC_IMG" "$(uri $s unix)"; done

bench_matrix on off
curl -s "http://$METRICS/metrics" | grep -E '^nbdmgr_requests_total\{export="bench",op="(read|write)",result="ok"\}'
