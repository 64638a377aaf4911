#!/usr/bin/env bash
# Data-plane benchmark: the same fio and nbdcopy work against nbdmgrd and its
# peers in one run, the servers' order rotating every round. Prints medians
# (MB/s for 1 MiB and copy rows, IOPS for 4 KiB rows) with the ratio
# nbdmgrd/peer, each server's CPU microseconds per request, the system calls
# per request of a separate perf pass, and which issue-16 targets were met.
#
# Usage: tests/bench/dataplane.sh [BUILD_DIR]
#   env: ROUNDS=3 SECONDS_PER_JOB=5
#        BACKEND=memory|file   what the servers serve (default memory; file:
#                              a 1 GiB file each, in a temp dir, page cache).
#                              Peers: nbdkit (memory or file plugin) and, for
#                              file, qemu-storage-daemon (aio=io_uring,
#                              cache.direct=off; skipped with a note if not
#                              installed, or with QSD=0)
#        TLS=1                 X.509 TLS (required, client certificates
#                              verified) on a memory export, against nbdkit
#                              --tls=require; a throwaway CA in the temp dir
#        BASELINE=PATH         the peer is another nbdmgrd binary (e.g. a build
#                              of the previous commit) instead of nbdkit: the
#                              regression check for refactors. Both daemons
#                              are restarted and refilled every round, in
#                              alternating order: whichever starts first runs
#                              measurably slower (~10% on 2 cores), which a
#                              fixed order would charge to one build
#        ROWS=REGEX            only the rows whose id matches (default all):
#                              read-1m-1 read-1m-4 write-1m-1 write-1m-4
#                              randread-4k-1 randread-4k-4 randwrite-4k-1
#                              randwrite-4k-4 copy-up copy-down
#                              (OP-BS-CONNECTIONS; fio's nbd engine, queue
#                              depth 32 per connection, read/write sequential;
#                              copy: nbdcopy of 1 GiB file->nbd and nbd->null,
#                              COPY_CONNECTIONS=4 connections, 256 KiB requests)
#        TRANSPORTS="unix tcp"
#        SYSCALLS=1|0|only     after each round's rows, run SYSCALL_ROWS
#                              (default '^rand(read|write)-4k-1$', also
#                              filtered by ROWS) once more per server on
#                              SYSCALL_TRANSPORT (default unix) under `perf
#                              stat -p SERVER` and report system calls per
#                              request (default 1 when perf is installed;
#                              only: just that pass). SYSCALL_EVENTS overrides
#                              the per-name event list, e.g.
#                              SYSCALL_EVENTS='syscalls:sys_enter_*'
#        NBDMGR_EXTRA="..."    extra nbdmgrd flags (both nbdmgrd servers)
#        EXPORT_EXTRA=",k=v"   appended to nbdmgrd's --export (e.g. ,io=threads)
#        RESULTS=DIR           keep the raw per-round TSVs there
#
# Runtime with the defaults: about 3.5 min per round with two servers
# (memory, TLS, BASELINE) and 5.5 min with three (file), plus a minute of
# setup: ~11-12 and ~17 minutes for three rounds. For quick iteration e.g.
#   ROUNDS=1 SECONDS_PER_JOB=2 TRANSPORTS=unix ROWS=randread-4k-1 tests/bench/dataplane.sh build
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
NBDMGRD=$BUILD/daemon/nbdmgrd
ROUNDS=${ROUNDS:-3}
SECS=${SECONDS_PER_JOB:-5}
BACKEND=${BACKEND:-memory}
TLS=${TLS:-0}
# shellcheck source=lib.sh
. "$HERE/lib.sh"
case "$BACKEND" in memory|file) ;; *) echo "BACKEND must be memory or file" >&2; exit 2 ;; esac
if [ "$TLS" = 1 ] && [ "$BACKEND" != memory ]; then
  echo "TLS=1 runs on memory exports only" >&2; exit 2
fi
if [ "${SYSCALLS:-1}" != 0 ] && ! command -v perf >/dev/null; then
  echo "note: perf not installed, no system-call counts" >&2; SYSCALLS=0
fi
[ -x "$NBDMGRD" ] || { echo "no $NBDMGRD" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
PERF_PID=
cleanup() {
  [ -n "$PERF_PID" ] && kill "$PERF_PID" 2>/dev/null
  [ ${#PIDS[@]} -gt 0 ] && kill "${PIDS[@]}" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

PKI=$WORK/pki
# make_pki: a CA, a server certificate for localhost/127.0.0.1 and a client
# certificate in $PKI, laid out as both libnbd and nbdkit expect.
ct() { certtool "$@" >"$PKI/certtool.log" 2>&1 || { cat "$PKI/certtool.log" >&2; return 1; }; }
make_pki() {
  mkdir -p "$PKI"
  printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 2\n' > "$PKI/ca.info"
  printf 'organization = bench\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' > "$PKI/server.info"
  printf 'organization = bench\ncn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n' > "$PKI/client.info"
  ct --generate-privkey --outfile "$PKI/ca-key.pem"
  ct --generate-self-signed --load-privkey "$PKI/ca-key.pem" \
    --template "$PKI/ca.info" --outfile "$PKI/ca-cert.pem"
  for role in server client; do
    ct --generate-privkey --outfile "$PKI/$role-key.pem"
    ct --generate-certificate --load-privkey "$PKI/$role-key.pem" \
      --load-ca-certificate "$PKI/ca-cert.pem" --load-ca-privkey "$PKI/ca-key.pem" \
      --template "$PKI/$role.info" --outfile "$PKI/$role-cert.pem"
  done
}
if [ "$TLS" = 1 ]; then
  command -v certtool >/dev/null || { echo "TLS=1 needs certtool (gnutls-bin)" >&2; exit 2; }
  make_pki
fi

declare -A PORT PID  # PORT[server], PID[server] or PID[server|transport]

# mgr_spec IMAGE: the --export of an nbdmgrd serving IMAGE (file backend).
mgr_spec() {
  local tls=; [ "$TLS" = 1 ] && tls=,tls=require
  if [ "$BACKEND" = memory ]; then echo "name=bench,backend=memory,size=1GiB$tls${EXPORT_EXTRA:-}"
  else echo "name=bench,backend=file,path=$1,size=1GiB$tls${EXPORT_EXTRA:-}"; fi
}
# start_mgr SERVER BINARY: starts an nbdmgrd as SERVER (unix socket
# $WORK/SERVER.sock, TCP port PORT[SERVER], image $WORK/SERVER.img).
start_mgr() {
  local tls=()
  [ "$TLS" = 1 ] && tls=(--tls-cert "$PKI/server-cert.pem" --tls-key "$PKI/server-key.pem"
                         --tls-ca "$PKI/ca-cert.pem")
  # shellcheck disable=SC2086
  "$2" --log-level warn --nbd-listen "tcp:127.0.0.1:${PORT[$1]}" \
    --nbd-listen "unix:$WORK/$1.sock" --metrics-listen none --control-listen none \
    --state-dir none --export "$(mgr_spec "$WORK/$1.img")" "${tls[@]}" \
    ${NBDMGR_EXTRA:-} >/dev/null &
  PID[$1]=$!
  PIDS+=($!)
}

uri() {  # uri SERVER TRANSPORT
  local name=bench scheme=nbd q=
  [ "$1" = nbdkit ] && name=  # nbdkit serves its one disk under any name
  [ "$TLS" = 1 ] && scheme=nbds && q="tls-certificates=$PKI"
  case $2 in
    unix) echo "$scheme+unix:///$name?socket=$WORK/$1.sock${q:+&$q&tls-hostname=localhost}" ;;
    tcp) echo "$scheme://127.0.0.1:${PORT[$1]}/$name${q:+?$q}" ;;
  esac
}
# server_pids SERVER TRANSPORT: the process(es) serving that transport.
server_pids() { echo "${PID[$1|$2]:-${PID[$1]}}"; }

SRC_IMG=$WORK/src.img
head -c 1G /dev/urandom > "$SRC_IMG"
# fill SERVER TRANSPORT: random data on the whole disk (first writes to a
# fresh disk are much slower than rewrites; nbdcopy skips holes).
fill() { nbdcopy --no-extents -C 4 -T 4 "$SRC_IMG" "$(uri "$1" "$2")"; }
wait_server() {
  wait_uri "$(uri "$1" unix)" && wait_uri "$(uri "$1" tcp)" && return 0
  tail -n 5 "$WORK/$1"-*.log >&2 2>/dev/null
  return 1
}

PORT[nbdmgrd]=$(free_port)
if [ -n "${BASELINE:-}" ]; then
  SERVERS=(nbdmgrd baseline)
  MODE=baseline
  PORT[baseline]=$(free_port)
  # start_pair FIRST: (re)starts both daemons, FIRST first, and fills them.
  start_pair() {
    local s
    if [ ${#PIDS[@]} -gt 0 ]; then
      kill "${PIDS[@]}" 2>/dev/null || true
      wait "${PIDS[@]}" 2>/dev/null || true
    fi
    PIDS=()
    rm -f "$WORK/nbdmgrd.img" "$WORK/baseline.img"
    for s in "$1" $([ "$1" = nbdmgrd ] && echo baseline || echo nbdmgrd); do
      if [ "$s" = nbdmgrd ]; then start_mgr nbdmgrd "$NBDMGRD"
      else start_mgr baseline "$BASELINE"; fi
      wait_server "$s"
      fill "$s" unix
    done
  }
  before_round() { start_pair "${SERVERS[$((($1 - 1) % 2))]}"; }
  DESC="nbdmgrd ($NBDMGRD) vs baseline ($BASELINE), restarted every round"
else
  SERVERS=(nbdmgrd nbdkit)
  MODE=$BACKEND; [ "$TLS" = 1 ] && MODE=tls
  start_mgr nbdmgrd "$NBDMGRD"
  PORT[nbdkit]=$(free_port)
  if [ "$BACKEND" = memory ]; then plugin=(memory 1G)
  else truncate -s 1G "$WORK/nbdkit.img"; plugin=(file "$WORK/nbdkit.img"); fi
  tls=()
  [ "$TLS" = 1 ] && tls=(--tls=require "--tls-certificates=$PKI" --tls-verify-peer)
  # nbdkit listens on either a socket or a port: one process each (the file
  # plugin's two share the file; the memory plugin's have a disk each).
  # (Their stderr goes to $WORK/*.log: nbdkit complains about every TLS
  # client that closes without a TLS goodbye, as fio does.)
  nbdkit --exit-with-parent -f -i 127.0.0.1 -p "${PORT[nbdkit]}" "${tls[@]}" "${plugin[@]}" \
    2>"$WORK/nbdkit-tcp.log" &
  PID[nbdkit|tcp]=$!; PIDS+=($!)
  nbdkit --exit-with-parent -f -U "$WORK/nbdkit.sock" "${tls[@]}" "${plugin[@]}" \
    2>"$WORK/nbdkit-unix.log" &
  PID[nbdkit|unix]=$!; PIDS+=($!)
  DESC="nbdmgrd ($NBDMGRD) vs nbdkit $(nbdkit --version | awk '{print $2}') (${plugin[0]} plugin)"
  if [ "$BACKEND" = file ] && [ "${QSD:-1}" = 1 ]; then
    if command -v qemu-storage-daemon >/dev/null; then
      # qemu-storage-daemon takes one --nbd-server: one process per
      # transport, sharing one raw file (locking=off lets the second open it).
      SERVERS+=(qsd)
      PORT[qsd]=$(free_port)
      truncate -s 1G "$WORK/qsd.img"
      for t in unix tcp; do
        if [ $t = unix ]; then addr="addr.type=unix,addr.path=$WORK/qsd.sock"
        else addr="addr.type=inet,addr.host=127.0.0.1,addr.port=${PORT[qsd]}"; fi
        qemu-storage-daemon \
          --blockdev "driver=file,node-name=f,filename=$WORK/qsd.img,aio=io_uring,cache.direct=off,locking=off" \
          --blockdev driver=raw,node-name=r,file=f \
          --nbd-server "$addr" \
          --export type=nbd,id=e,node-name=r,name=bench,writable=on \
          2>"$WORK/qsd-$t.log" &
        PID[qsd|$t]=$!; PIDS+=($!)
      done
      DESC+=" and qemu-storage-daemon $(qemu-storage-daemon --version | awk 'NR==1{print $3}') (aio=io_uring, cache.direct=off)"
    else
      echo "note: qemu-storage-daemon not installed (Debian: qemu-system-common), no qsd columns" >&2
    fi
  fi
  for s in "${SERVERS[@]}"; do wait_server "$s"; done
  fill nbdmgrd unix
  fill nbdkit unix
  if [ "$BACKEND" = memory ]; then fill nbdkit tcp; fi
  if [ -n "${PID[qsd|unix]:-}" ]; then fill qsd unix; fi
fi
[ "$TLS" = 1 ] && DESC+="; X.509 TLS required, client certificates verified"

echo "backend: $BACKEND; $DESC" >&2
dp_matrix
echo "backend: $BACKEND; $DESC"
$PY "$HERE/dataplane_report.py" --results "$WORK/results.tsv" --syscalls "$WORK/syscalls.tsv" \
  --servers "$(IFS=,; echo "${SERVERS[*]}")" --mode "$MODE" \
  --note "${SECS}s per fio job, qd$DP_QD per connection; $(nproc) cores"
if [ -n "${RESULTS:-}" ]; then mkdir -p "$RESULTS"; cp "$WORK"/results.tsv "$WORK"/syscalls.tsv "$RESULTS"/; fi
