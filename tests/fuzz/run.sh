#!/usr/bin/env bash
# Runs each libFuzzer target for a bounded time from the seed corpus in
# tests/fuzz/corpus/ (copied, so the repository is not modified). Exits
# non-zero if a target crashes, leaks or hangs; the reproducer is printed.
#
# Usage: tests/fuzz/run.sh FUZZ_BUILD_DIR [SECONDS_PER_TARGET]   (default 60)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$1
SECS=${2:-60}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for t in handshake requests; do
  mkdir -p "$WORK/$t"
  cp "$HERE/corpus/$t"/* "$WORK/$t/"
  echo "fuzz_$t: ${SECS}s" >&2
  if ! "$BUILD/tests/fuzz/fuzz_$t" -max_total_time="$SECS" -max_len=1048576 \
      -rss_limit_mb=4096 -timeout=25 -print_final_stats=1 \
      -artifact_prefix="$WORK/" "$WORK/$t" >"$WORK/$t.log" 2>&1; then
    tail -60 "$WORK/$t.log" >&2
    for a in "$WORK"/crash-* "$WORK"/leak-* "$WORK"/timeout-* "$WORK"/oom-*; do
      [ -e "$a" ] && { echo "reproducer $a:" >&2; base64 "$a" >&2; }
    done
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^Done" "$WORK/$t.log" >&2 || true
done
