# Shared helpers for the benchmark scripts (sourced).
# shellcheck shell=bash

PY=/usr/bin/python3
export PATH=/usr/bin:$PATH  # Debian's python3 for nbdsh / python3-libnbd

free_port() {
  $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for_socket PATH|PORT: until something accepts connections there.
wait_for() {
  local target=$1
  for _ in $(seq 1 100); do
    if [[ $target == /* ]]; then
      [ -S "$target" ] && nbdinfo --size "nbd+unix:///?socket=$target" >/dev/null 2>&1 && return 0
      [ -S "$target" ] && nbdinfo --list "nbd+unix:///?socket=$target" >/dev/null 2>&1 && return 0
    else
      nbdinfo --list "nbd://127.0.0.1:$target/" >/dev/null 2>&1 && return 0
    fi
    sleep 0.1
  done
  echo "timed out waiting for $target" >&2
  return 1
}

# fio_mbps URI RW BS IODEPTH SECONDS: prints MB/s (read+write).
fio_mbps() {
  fio --name=bench --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" \
      --iodepth="$4" --size=1G --time_based --runtime="$5" \
      --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    $PY -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(round((j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1e6,1))'
}

# fio_iops URI RW BS IODEPTH SECONDS: prints IOPS (read+write).
fio_iops() {
  fio --name=bench --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" \
      --iodepth="$4" --size=1G --time_based --runtime="$5" \
      --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    $PY -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(round(j["read"]["iops"]+j["write"]["iops"]))'
}

# seconds CMD...: wall time of a command, in seconds.
seconds() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; echo nan; return; }
  t1=$(date +%s.%N)
  $PY -c "print(round($t1-$t0,3))"
}

median() { $PY -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:] if x!="nan"]; print(round(statistics.median(v),1) if v else "nan")' "$@"; }

# bench_matrix A B: runs the data-plane matrix (fio seq/rand read/write and
# nbdcopy in and out, over unix and tcp) against servers A and B, alternating
# which goes first every round, and prints a table of medians with the ratio
# A/B. The caller defines `uri SERVER TRANSPORT` and SRC_IMG (a 1 GiB file),
# and may define `before_job SERVER` / `after_job SERVER` hooks and a
# `before_round ROUND` hook (called first in each round). If the
# caller fills the associative array SERVER_PID (server -> pid), a second
# table shows each server's CPU time per GB moved (ms/GB, lower is better),
# which is less sensitive to scheduling noise than throughput.
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

bench_matrix() {
  local a=$1 b=$2 round t job name rw bs qd s sec m k c0 mbps
  declare -A C
  local jobs=("seq read 1MiB qd8|read 1M 8" "seq write 1MiB qd8|write 1M 8"
              "rand read 4KiB qd32|randread 4k 32" "rand write 4KiB qd32|randwrite 4k 32")
  declare -A R
  declare -F before_job >/dev/null || before_job() { :; }
  declare -F after_job >/dev/null || after_job() { :; }
  declare -F before_round >/dev/null || before_round() { :; }
  for round in $(seq 1 "$ROUNDS"); do
    before_round "$round"
    local order=("$a" "$b"); [ $((round % 2)) -eq 0 ] && order=("$b" "$a")
    for t in unix tcp; do
      for job in "${jobs[@]}"; do
        name=${job%%|*}; read -r rw bs qd <<<"${job#*|}"
        for s in "${order[@]}"; do
          before_job "$s"
          c0=$(cpu_of "$s")
          mbps=$(fio_mbps "$(uri "$s" "$t")" "$rw" "$bs" "$qd" "$SECS")
          R["$t|$name|$s"]+=" $mbps"
          C["$t|$name|$s"]+=" $(cpu_per_gb "$s" "$c0" "$($PY -c "print($mbps*$SECS/1000)")")"
          after_job "$s"
        done
      done
      for s in "${order[@]}"; do
        before_job "$s"
        c0=$(cpu_of "$s")
        sec=$(seconds nbdcopy --no-extents "$SRC_IMG" "$(uri "$s" "$t")")
        R["$t|nbdcopy 1GiB file->nbd|$s"]+=" $($PY -c "print(round(1073.741824/$sec,1))")"
        C["$t|nbdcopy 1GiB file->nbd|$s"]+=" $(cpu_per_gb "$s" "$c0" 1.073741824)"
        c0=$(cpu_of "$s")
        sec=$(seconds nbdcopy --no-extents "$(uri "$s" "$t")" null:)
        R["$t|nbdcopy 1GiB nbd->null|$s"]+=" $($PY -c "print(round(1073.741824/$sec,1))")"
        C["$t|nbdcopy 1GiB nbd->null|$s"]+=" $(cpu_per_gb "$s" "$c0" 1.073741824)"
        after_job "$s"
      done
    done
    echo "round $round done" >&2
  done
  print_table R "$a" "$b" MB/s
  echo "(medians of $ROUNDS rounds, ${SECS}s per fio job; $(nproc) cores)"
  declare -p SERVER_PID >/dev/null 2>&1 || return 0
  print_table C "$a" "$b" ms/GB
  echo "(server CPU time, user+system, per GB moved; medians)"
}

# print_table ARRAY A B UNIT: medians of ARRAY["transport|job|server"] for
# servers A and B, and the ratio A/B.
print_table() {
  local -n vals=$1
  local a=$2 b=$3 unit=$4 t name m k
  printf '\n%-6s %-26s %14s %14s %7s\n' transport job "$a $unit" "$b $unit" ratio
  for t in unix tcp; do
    for name in "seq read 1MiB qd8" "seq write 1MiB qd8" "rand read 4KiB qd32" \
                "rand write 4KiB qd32" "nbdcopy 1GiB file->nbd" "nbdcopy 1GiB nbd->null"; do
      # shellcheck disable=SC2086
      m=$(median ${vals["$t|$name|$a"]}); k=$(median ${vals["$t|$name|$b"]})
      printf '%-6s %-26s %14s %14s %7s\n' "$t" "$name" "$m" "$k" \
        "$($PY -c "print(f'{$m/$k:.3f}')")"
    done
  done
}

# cpu_of SERVER: the server's CPU ticks so far (0 without SERVER_PID).
cpu_of() {
  if declare -p SERVER_PID >/dev/null 2>&1; then cpu_ticks "${SERVER_PID[$1]}"; else echo 0; fi
}
# cpu_per_gb SERVER TICKS_BEFORE GB: CPU ms per GB since TICKS_BEFORE.
cpu_per_gb() {
  local now; now=$(cpu_of "$1")
  $PY -c "print(round(($now-$2)*1000/$(getconf CLK_TCK)/max($3,1e-9),1))"
}

# ---------------------------------------------------------------------------
# The data-plane rows of dataplane.sh (issue 16): any number of servers, the
# first one compared with each of the others. Results go to TSV files that
# dataplane_report.py turns into tables.
#
# Row ids: OP-BS-CONNS for fio's nbd engine (OP read|write = sequential,
# randread|randwrite = random; BS 1m|4k; CONNS 1|4, each fio job its own
# connection with queue depth 32, so 4 connections keep 128 requests in
# flight), and copy-up / copy-down for nbdcopy (1 GiB file->nbd and
# nbd->null, COPY_CONNECTIONS connections, 256 KiB requests).
DP_ROWS=(read-1m-1 read-1m-4 write-1m-1 write-1m-4 randread-4k-1 randread-4k-4
         randwrite-4k-1 randwrite-4k-4 copy-up copy-down)
DP_QD=32
COPY_CONNECTIONS=${COPY_CONNECTIONS:-4}
COPY_REQUEST=262144

# wait_uri URI: until an NBD client can open URI (TLS URIs too).
wait_uri() {
  for _ in $(seq 1 150); do
    nbdinfo --size "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2
  return 1
}

# fio_job URI ROW SECONDS: runs fio row ROW against URI; prints
# "MB/s IOPS REQUESTS" (read+write; "nan nan 0" and fio's complaint on
# stderr if it failed).
#
# fio's nbd engine refuses URIs that name local files (tls-certificates=),
# and without one libnbd takes root's certificates from /etc/pki/libnbd.
# For a TLS URI, fio runs in a new user namespace instead, where it is not
# root (but still owns what root owns), with HOME at a copy of the
# certificates in .pki/libnbd: libnbd's default for other users.
fio_job() {
  local uri=$1 rw bs conns size=1G pre=() dir home
  IFS=- read -r rw bs conns <<<"$2"
  [ "$conns" -gt 1 ] && size=$((1024 / conns))M  # each job its own slice
  if [[ $uri =~ [?\&]tls-certificates=([^\&]*) ]]; then
    dir=${BASH_REMATCH[1]}
    home=$dir/fio-home
    if [ ! -d "$home" ]; then
      mkdir -p "$home/.pki/libnbd"
      cp "$dir"/ca-cert.pem "$home/.pki/libnbd/"
      cp "$dir"/client-*.pem "$home/.pki/libnbd/" 2>/dev/null || true
    fi
    uri=${uri/&tls-certificates=$dir/}
    uri=${uri/\?tls-certificates=$dir&/?}
    uri=${uri/\?tls-certificates=$dir/}
    pre=(unshare -U env "HOME=$home")
  fi
  { "${pre[@]}" fio --name=bench --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" \
      --iodepth=$DP_QD --numjobs="$conns" --offset_increment="$size" \
      --size="$size" --group_reporting --time_based --runtime="$3" \
      --output-format=json 2>"$WORK/fio.err" || true; } | sed -n '/^{/,$p' |
    $PY -c '
import json, sys
try:
    j = json.load(sys.stdin)["jobs"][0]
    r, w = j["read"], j["write"]
    n = r["total_ios"] + w["total_ios"]
    assert j["error"] == 0 and n > 0
    print((r["bw_bytes"] + w["bw_bytes"]) / 1e6, r["iops"] + w["iops"], n)
except Exception:
    print("nan nan 0")
    sys.exit(1)' || { echo "fio $2 failed on $uri: $(tail -n 3 "$WORK/fio.err")" >&2; }
}

# copy_job URI up|down: one nbdcopy of the whole 1 GiB SRC_IMG to URI (up)
# or from URI to null: (down); prints "MB/s IOPS REQUESTS".
copy_job() {
  local sec args=(--no-extents -C "$COPY_CONNECTIONS" -T "$COPY_CONNECTIONS"
                  "--request-size=$COPY_REQUEST")
  if [ "$2" = up ]; then sec=$(seconds nbdcopy "${args[@]}" "$SRC_IMG" "$1")
  else sec=$(seconds nbdcopy "${args[@]}" "$1" null:); fi
  local n=$((1073741824 / COPY_REQUEST))
  [ "$sec" = nan ] && { echo "nan nan 0"; return; }
  $PY -c "print(1073.741824 / $sec, $n / $sec, $n)"
}

# run_job URI ROW SECONDS: fio_job or copy_job by row id.
run_job() {
  case $2 in
    copy-up) copy_job "$1" up ;;
    copy-down) copy_job "$1" down ;;
    *) fio_job "$1" "$2" "$3" ;;
  esac
}

# cpu_ticks_sum PID...: utime+stime of the processes, in clock ticks.
cpu_ticks_sum() {
  local p n=0
  for p in "$@"; do n=$((n + $(cpu_ticks "$p"))); done
  echo $n
}

# dp_rows: the ids of DP_ROWS that match ROWS (an extended regex, default:
# all).
dp_rows() {
  local id
  for id in "${DP_ROWS[@]}"; do
    [[ $id =~ ${ROWS:-.} ]] && echo "$id"
  done
  return 0
}

# measure_row ROUND SERVER TRANSPORT ROW: one row against one server,
# appended to $WORK/results.tsv with the server's CPU time per request (from
# /proc/PID/stat of the processes `server_pids SERVER TRANSPORT` names).
measure_row() {
  local pids c0 c1 out
  read -r -a pids <<<"$(server_pids "$2" "$3")"
  c0=$(cpu_ticks_sum "${pids[@]}")
  out=$(run_job "$(uri "$2" "$3")" "$4" "$SECS")
  c1=$(cpu_ticks_sum "${pids[@]}")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$3" "$4" "$2" "${out// /$'\t'}" \
    "$(( (c1 - c0) * 1000000 / $(getconf CLK_TCK) ))" >> "$WORK/results.tsv"
}

# The system calls counted per request: raw_syscalls:sys_enter for the
# total, and each of SYSCALL_EVENTS (default: the data path's usual calls;
# SYSCALL_EVENTS='syscalls:sys_enter_*' counts every one, at a higher
# tracing cost) for the names.
SC_NAMES="read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2
  recvfrom recvmsg recvmmsg sendto sendmsg sendmmsg sendfile64 splice vmsplice
  epoll_wait epoll_pwait epoll_pwait2 epoll_ctl poll ppoll select pselect6
  io_uring_enter io_submit io_getevents io_pgetevents futex lseek fdatasync fsync
  sync_file_range fallocate madvise mmap munmap mprotect mremap brk
  clock_nanosleep nanosleep sched_yield rt_sigprocmask eventfd2 timerfd_settime
  getrandom ioctl fcntl close accept4 setsockopt getsockopt"
perf_events() {
  local have n ev=(-e raw_syscalls:sys_enter)
  if [ -n "${SYSCALL_EVENTS:-}" ]; then
    for n in $SYSCALL_EVENTS; do ev+=(-e "$n"); done
  else
    have=$(perf list 'syscalls:sys_enter_*' 2>/dev/null)
    for n in $SC_NAMES; do
      [[ $have == *"syscalls:sys_enter_$n "* ]] && ev+=(-e "syscalls:sys_enter_$n")
    done
  fi
  printf '%s\n' "${ev[@]}"
}

# perf_ctl COMMAND: enable/disable the running perf stat and wait for its
# acknowledgement (so the counting window is exactly the job's).
perf_ctl() {
  echo "$1" >&"$PERF_CTL"
  local ack=
  read -r -t 300 ack <&"$PERF_ACK" || true
  if [ "$ack" != ack ]; then echo "perf stat did not acknowledge '$1'" >&2; return 1; fi
}

# count_syscalls ROUND SERVER TRANSPORT ROW: the row once more with perf
# stat counting the server's system calls; appends "round transport row
# server requests total name=count..." to $WORK/syscalls.tsv.
count_syscalls() {
  local pids out n ev
  pids=$(server_pids "$2" "$3")
  mapfile -t ev < <(perf_events)
  rm -f "$WORK/perf.ctl" "$WORK/perf.ack" "$WORK/perf.out"
  mkfifo "$WORK/perf.ctl" "$WORK/perf.ack"
  exec {PERF_CTL}<>"$WORK/perf.ctl" {PERF_ACK}<>"$WORK/perf.ack"
  perf stat -x, -o "$WORK/perf.out" -D -1 --control "fd:$PERF_CTL,$PERF_ACK" \
    "${ev[@]}" -p "${pids// /,}" >/dev/null 2>&1 &
  PERF_PID=$!
  perf_ctl enable
  out=$(run_job "$(uri "$2" "$3")" "$4" "$SECS")
  perf_ctl disable
  kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=
  exec {PERF_CTL}>&- {PERF_ACK}>&-
  read -r _ _ n <<<"$out"
  $PY - "$1" "$3" "$4" "$2" "$n" "$WORK/perf.out" >> "$WORK/syscalls.tsv" <<'PYEOF'
import sys
rnd, t, row, server, reqs, path = sys.argv[1:]
total, names = 0, {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) < 3 or line.startswith("#"):
        continue
    count = int(f[0]) if f[0].isdigit() else 0
    if f[2] == "raw_syscalls:sys_enter":
        total = count
    elif f[2].startswith("syscalls:sys_enter_") and count:
        names[f[2][len("syscalls:sys_enter_"):]] = count
print("\t".join([rnd, t, row, server, reqs, str(total)] +
                [f"{k}={v}" for k, v in sorted(names.items(), key=lambda kv: -kv[1])]))
PYEOF
}

# dp_matrix: ROUNDS rounds over SERVERS (an array; the first is compared with
# each of the others). Each round calls the caller's before_round ROUND (if
# defined), then runs every selected row (ROWS) on every transport
# (TRANSPORTS) against every server, the servers' order rotating by one each
# round; then, unless SYSCALLS=0, the rows matching SYSCALL_ROWS (and ROWS)
# once more on SYSCALL_TRANSPORT under perf stat. SYSCALLS=only skips the
# throughput rows. The caller defines `uri SERVER TRANSPORT`,
# `server_pids SERVER TRANSPORT` and SRC_IMG (a 1 GiB file).
dp_matrix() {
  local round t id s i n=${#SERVERS[@]} order rows sc_rows
  local sc_re=${SYSCALL_ROWS:-'^rand(read|write)-4k-1$'}
  mapfile -t rows < <(dp_rows)
  sc_rows=()
  if [ "${SYSCALLS:-1}" != 0 ]; then
    for id in "${rows[@]}"; do
      [[ $id =~ $sc_re ]] && sc_rows+=("$id")
    done
  fi
  : > "$WORK/results.tsv"; : > "$WORK/syscalls.tsv"
  declare -F before_round >/dev/null || before_round() { :; }
  for round in $(seq 1 "$ROUNDS"); do
    before_round "$round"
    order=()
    for i in $(seq 0 $((n - 1))); do order+=("${SERVERS[$(((i + round - 1) % n))]}"); done
    if [ "${SYSCALLS:-1}" != only ]; then
      for t in ${TRANSPORTS:-unix tcp}; do
        for id in "${rows[@]}"; do
          for s in "${order[@]}"; do measure_row "$round" "$s" "$t" "$id"; done
        done
      done
    fi
    for id in "${sc_rows[@]}"; do
      for s in "${order[@]}"; do
        count_syscalls "$round" "$s" "${SYSCALL_TRANSPORT:-unix}" "$id"
      done
    done
    echo "round $round done ($(date +%T))" >&2
  done
}
