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
