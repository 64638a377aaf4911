#!/usr/bin/python3
"""Load generator for the buffer benchmark (libnbd's Python bindings).

  nbdload.py spike URI [--connections N] [--size BYTES] [--wave W] [--pid PID]
      Opens N connections; every one sends one WRITE of SIZE bytes at the same
      moment, then every one one READ; with --wave W, connections go W at a
      time and every byte read back is verified. Prints JSON with the daemon's
      peak RSS (VmHWM of --pid) and its RSS 10 s later, connections still open.

All connections write the same region (offset 0), so the export holds SIZE
bytes; within a wave every connection writes the same pattern (the two
patterns alternate between waves), so the data read back is fully
determined and checked.
"""
import argparse
import json
import os
import select
import sys
import time

import nbd


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def run_all(handles, start):
    """Starts one command per handle with start(h) -> cookie; waits for all."""
    pending = {h: start(h) for h in handles}
    poller = select.poll()
    while pending:
        fds = {}
        poller = select.poll()
        for h in pending:
            d = h.aio_get_direction()
            mask = 0
            if d & nbd.AIO_DIRECTION_READ:
                mask |= select.POLLIN
            if d & nbd.AIO_DIRECTION_WRITE:
                mask |= select.POLLOUT
            fd = h.aio_get_fd()
            fds[fd] = h
            poller.register(fd, mask)
        for fd, ev in poller.poll(1000):
            h = fds[fd]
            if ev & select.POLLIN:
                h.aio_notify_read()
            if ev & select.POLLOUT:
                h.aio_notify_write()
        for h in list(pending):
            if h.aio_command_completed(pending[h]):  # raises on NBD error
                del pending[h]


def pattern(size, seed):
    block = bytes((seed * 31 + i * 7) % 256 for i in range(4096))
    return bytearray(block * (size // 4096))


def spike(args):
    handles = []
    for _ in range(args.connections):
        h = nbd.NBD()
        h.connect_uri(args.uri)
        handles.append(h)
    t0 = time.time()
    wave = args.wave or args.connections
    verified = 0
    # Buffers are reused across waves (the bindings keep them alive): two
    # write patterns alternate, so data left over from the previous wave
    # fails verification; one read buffer per connection of a wave.
    patterns = [pattern(args.size, 0), pattern(args.size, 1)]
    wbufs = [nbd.Buffer.from_bytearray(p) for p in patterns]
    rbufs = [nbd.Buffer(args.size) for _ in range(wave if args.wave else 1)]
    for w, first in enumerate(range(0, len(handles), wave)):
        group = handles[first:first + wave]
        wbuf = wbufs[w % 2]
        run_all(group, lambda h: h.aio_pwrite(wbuf, 0))
        slot = {h: rbufs[i % len(rbufs)] for i, h in enumerate(group)}
        run_all(group, lambda h: h.aio_pread(slot[h], 0))
        if args.wave:
            for h in group:
                if slot[h].to_bytearray() != patterns[w % 2]:
                    sys.exit(f"data mismatch in wave {w}")
                verified += args.size
    elapsed = time.time() - t0
    peak = status(args.pid, "VmHWM") if args.pid else 0
    time.sleep(args.settle)
    settled = status(args.pid, "VmRSS") if args.pid else 0
    for h in handles:
        h.shutdown()
    print(json.dumps({"peak_rss": peak, "settled_rss": settled,
                      "seconds": round(elapsed, 2), "verified_bytes": verified}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("spike")
    s.add_argument("uri")
    s.add_argument("--connections", type=int, default=384)
    s.add_argument("--size", type=int, default=32 << 20)
    s.add_argument("--wave", type=int, default=0)
    s.add_argument("--pid", type=int, default=0)
    s.add_argument("--settle", type=float, default=10.0)
    args = p.parse_args()
    spike(args)


if __name__ == "__main__":
    main()
