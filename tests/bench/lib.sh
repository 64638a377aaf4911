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
