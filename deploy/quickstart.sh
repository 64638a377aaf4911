#!/usr/bin/env bash
# The README's quick start. On a fresh Debian 12 machine (as root, or with
# sudo) it installs what is missing, builds, and then:
#   deploy/quickstart.sh run    serve a 1 GiB in-memory export on 127.0.0.1:10809
#   deploy/quickstart.sh test   run the whole test suite: unit + interop, then
#                               a Release (-O3, -Werror) build, the suite
#                               under ASan+UBSan, the concurrency tests
#                               under TSan, and the fuzz targets
#                               (NBDMGR_QUICK=1 skips that sanitizer tier)
# Extra arguments after `run` go to nbdmgrd.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${NBDMGR_BUILD_DIR:-$ROOT/build}
mode=${1:-}
[ $# -gt 0 ] && shift
case "$mode" in
  run|test) ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac

bash "$ROOT/deploy/install-deps.sh"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j "$(nproc)"

if [ "$mode" = run ]; then
  echo "nbdmgrd: serving a 1 GiB memory export on 127.0.0.1:10809;" \
       "connect with: nbdinfo nbd://127.0.0.1/" >&2
  exec "$BUILD/daemon/nbdmgrd" --nbd-listen tcp:127.0.0.1:10809 \
    --export name=default,backend=memory,size=1GiB,description="nbdmgr quick start" "$@"
fi
(cd "$BUILD" && ctest -j "$(nproc)" --output-on-failure --timeout 900)
if [ "${NBDMGR_QUICK:-0}" != 1 ]; then
  bash "$ROOT/tests/sanitizers.sh" "$BUILD"
fi
