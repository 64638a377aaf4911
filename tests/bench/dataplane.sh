#!/usr/bin/env bash
# Data-plane benchmark: the same fio and nbdcopy work against nbdmgrd and a
# peer in one run, alternating which goes first every round. Prints one table
# of medians (MB/s) with the ratio nbdmgrd/peer, and one of each server's CPU
# time per GB moved.
#
# Usage: tests/bench/dataplane.sh [BUILD_DIR]
#   env: ROUNDS=3 SECONDS_PER_JOB=5
#        BACKEND=memory|file   what both servers serve (default memory; file:
#                              a 1 GiB file each, in a temp dir)
#        BASELINE=PATH         the peer is another nbdmgrd binary (e.g. a build
#                              of the previous commit) instead of nbdkit: the
#                              regression check for refactors. Both daemons
#                              are restarted and refilled every round, in
#                              alternating order: whichever starts first runs
#                              measurably slower (~10% on 2 cores), which a
#                              fixed order would charge to one build
#        NBDMGR_EXTRA="..."    extra nbdmgrd flags (both nbdmgrd servers)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
NBDMGRD=$BUILD/daemon/nbdmgrd
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_JOB:-5}
BACKEND=${BACKEND:-memory}
# shellcheck source=lib.sh
. "$HERE/lib.sh"
case "$BACKEND" in memory|file) ;; *) echo "BACKEND must be memory or file" >&2; exit 2 ;; esac

WORK=$(mktemp -d)
trap 'kill $MGR_PID $PEER_PIDS 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT

# mgr_spec IMAGE: the --export of an nbdmgrd serving IMAGE (file backend).
mgr_spec() {
  if [ "$BACKEND" = memory ]; then echo "name=bench,backend=memory,size=1GiB"
  else echo "name=bench,backend=file,path=$1,size=1GiB"; fi
}
# start_mgr BINARY PORT SOCKET IMAGE: starts an nbdmgrd, prints its pid.
start_mgr() {
  # shellcheck disable=SC2086
  "$1" --log-level warn --nbd-listen "tcp:127.0.0.1:$2" --nbd-listen "unix:$3" \
    --metrics-listen none --control-listen none --state-dir none \
    --export "$(mgr_spec "$4")" ${NBDMGR_EXTRA:-} >/dev/null &
  echo $!
}

MGR_PORT=$(free_port); PEER_PORT=$(free_port)
SRC_IMG=$WORK/src.img
head -c 1G /dev/urandom > "$SRC_IMG"
# fill SERVER: random data on the whole disk (first writes to a fresh disk
# are much slower than rewrites; nbdcopy skips holes).
fill() { nbdcopy --no-extents -C 4 -T 4 "$SRC_IMG" "$(uri "$1" unix)"; }
declare -A SERVER_PID
if [ -n "${BASELINE:-}" ]; then
  PEER=baseline
  PEER_PIDS=""
  # start_pair FIRST: (re)starts both daemons, FIRST first, and fills them.
  start_pair() {
    local s pid
    for pid in $MGR_PID $PEER_PIDS; do  # not our children: poll until gone
      kill "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    done
    rm -f "$WORK/mgr.img" "$WORK/peer.img"
    for s in "$1" $([ "$1" = nbdmgrd ] && echo baseline || echo nbdmgrd); do
      if [ "$s" = nbdmgrd ]; then
        MGR_PID=$(start_mgr "$NBDMGRD" "$MGR_PORT" "$WORK/mgr.sock" "$WORK/mgr.img")
        wait_for "$WORK/mgr.sock"; wait_for "$MGR_PORT"
      else
        PEER_PIDS=$(start_mgr "$BASELINE" "$PEER_PORT" "$WORK/peer.sock" "$WORK/peer.img")
        wait_for "$WORK/peer.sock"; wait_for "$PEER_PORT"
      fi
      fill "$s"
    done
    SERVER_PID=([nbdmgrd]=$MGR_PID [baseline]=$PEER_PIDS)
  }
  before_round() { start_pair "$([ $(($1 % 2)) -eq 1 ] && echo nbdmgrd || echo baseline)"; }
  MGR_PID=""
else
  PEER=nbdkit
  MGR_PID=$(start_mgr "$NBDMGRD" "$MGR_PORT" "$WORK/mgr.sock" "$WORK/mgr.img")
  if [ "$BACKEND" = memory ]; then plugin=(memory 1G)
  else truncate -s 1G "$WORK/peer.img"; plugin=(file "$WORK/peer.img"); fi
  nbdkit --exit-with-parent -f -i 127.0.0.1 -p "$PEER_PORT" "${plugin[@]}" &
  PEER_PIDS=$!
  PEER_CPU_PID=$!
  nbdkit --exit-with-parent -f -U "$WORK/peer.sock" "${plugin[@]}" &
  PEER_PIDS="$PEER_PIDS $!"
  wait_for "$WORK/mgr.sock"; wait_for "$MGR_PORT"; wait_for "$WORK/peer.sock"; wait_for "$PEER_PORT"
  # CPU time per GB is measured on the unix-socket nbdkit (the TCP one is a
  # second process; nbdmgrd serves both from one).
  SERVER_PID=([nbdmgrd]=$MGR_PID [nbdkit]=$PEER_CPU_PID)
fi

uri() {  # uri SERVER TRANSPORT
  case "$1/$2" in
    nbdmgrd/unix) echo "nbd+unix:///bench?socket=$WORK/mgr.sock" ;;
    nbdmgrd/tcp) echo "nbd://127.0.0.1:$MGR_PORT/bench" ;;
    baseline/unix) echo "nbd+unix:///bench?socket=$WORK/peer.sock" ;;
    baseline/tcp) echo "nbd://127.0.0.1:$PEER_PORT/bench" ;;
    nbdkit/unix) echo "nbd+unix:///?socket=$WORK/peer.sock" ;;
    nbdkit/tcp) echo "nbd://127.0.0.1:$PEER_PORT/" ;;
  esac
}
if [ -z "${BASELINE:-}" ]; then
  fill nbdmgrd; fill nbdkit
fi

echo "backend: $BACKEND; peer: $PEER${BASELINE:+ ($BASELINE)}"
bench_matrix nbdmgrd "$PEER"
