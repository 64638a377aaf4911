#!/usr/bin/env bash
# The sanitizer tier of CI: a Release build of every target with -Werror
# (tests/release_build.sh: build only), the whole suite (unit + interop)
# built with ASan+UBSan, the concurrency tests built with TSan, and the
# libFuzzer targets (clang, which also builds the daemon with
# -Wthread-safety) run for a bounded time each.
#
# Usage: tests/sanitizers.sh BUILD_DIR_PREFIX   (builds PREFIX-release,
#        PREFIX-asan, PREFIX-tsan, PREFIX-fuzz; env FUZZ_SECONDS, default 60)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=$1
JOBS=$(nproc)

bash "$ROOT/tests/release_build.sh" "$PREFIX-release"

echo "== ASan + UBSan: whole suite" >&2
cmake -S "$ROOT" -B "$PREFIX-asan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DNBDMGR_SANITIZE=address,undefined >/dev/null
cmake --build "$PREFIX-asan" -j "$JOBS"
(cd "$PREFIX-asan" &&
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest -j "$JOBS" --output-on-failure --timeout 900)

echo "== TSan: concurrency tests" >&2
TSAN_TESTS=(nbd_test backend_test buffer_test metrics_test export_test control_test qos_test)
cmake -S "$ROOT" -B "$PREFIX-tsan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DNBDMGR_SANITIZE=thread >/dev/null
cmake --build "$PREFIX-tsan" -j "$JOBS" --target "${TSAN_TESTS[@]}"
for t in "${TSAN_TESTS[@]}"; do
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$ROOT/tests/tsan.supp" \
    "$PREFIX-tsan/tests/$t" --gtest_brief=1
done

echo "== libFuzzer targets" >&2
CC=clang-14 CXX=clang++-14 cmake -S "$ROOT" -B "$PREFIX-fuzz" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -gline-tables-only" \
  -DNBDMGR_FUZZ=ON -DNBDMGR_BUILD_TESTS=OFF >/dev/null
# The daemon and nbdctl too: clang's -Wthread-safety -Werror checks every
# lock annotation (GCC has no such analysis).
cmake --build "$PREFIX-fuzz" -j "$JOBS" --target fuzz_handshake fuzz_requests \
  nbdmgrd nbdctl
"$ROOT/tests/fuzz/run.sh" "$PREFIX-fuzz" "${FUZZ_SECONDS:-60}"
echo "sanitizers: all passed" >&2
