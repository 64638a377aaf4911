#!/usr/bin/env bash
# CI's release-build check: what a package ships (nbdmgrd, nbdctl and every
# library under lib/) built as packaged, CMAKE_BUILD_TYPE=Release (GCC 12,
# -O3 -DNDEBUG) with -Werror, so a warning that only optimization or NDEBUG brings out (e.g.
# -Wmaybe-uninitialized, -Wunused-variable behind an assert) fails CI.
# Build only, and not the test binaries: the suite runs in the
# RelWithDebInfo and sanitizer builds, and a cold build of everything would
# add ~9 minutes to CI on two cores.
# ccache (found by CMakeLists.txt) keeps a rebuild cheap.
#
# Usage: tests/release_build.sh BUILD_DIR
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$1

echo "== Release (-O3, -Werror): build nbdmgrd and nbdctl" >&2
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DNBDMGR_WERROR=ON >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target nbdmgrd nbdctl
