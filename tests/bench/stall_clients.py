#!/usr/bin/python3
"""Stalled NBD clients for the liveness benchmark (raw protocol, no libnbd).

  stall_clients.py SOCKET EXPORT [--connections N] [--size BYTES]
                   [--ready FILE] [--hold SECONDS]

Opens N connections to the Unix socket SOCKET (fixed newstyle handshake,
NBD_OPT_GO on EXPORT). Even-numbered connections send one WRITE header for
SIZE bytes plus a few bytes of its payload and then stop sending
("payload" stalls); odd-numbered ones send four SIZE-byte READs and never
read the replies ("replies" stalls). Once every request is sent it writes
"ready" to FILE (or stdout), then holds the connections, without reading
or writing, until killed (SIGTERM/SIGINT) or --hold seconds pass, and
closes them. Exits 0; the daemon dropping a connection is not an error.
"""
import argparse
import signal
import socket
import struct
import sys
import time

IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
OPT_GO = 7
REP_ACK, REP_INFO = 1, 3
CMD_READ, CMD_WRITE = 0, 1


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("server closed the connection")
        buf += chunk
    return buf


def connect(path, name):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # A small receive buffer so unread replies back up in the daemon soon.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(30)
    s.connect(path)
    greeting = recv_exact(s, 18)
    if greeting[:8] != b"NBDMAGIC":
        raise RuntimeError(f"bad greeting {greeting!r}")
    s.sendall(struct.pack(">I", 3))  # C_FIXED_NEWSTYLE | C_NO_ZEROES
    data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
    while True:
        magic, _, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
        if magic != OPT_REPLY_MAGIC:
            raise RuntimeError(f"bad option reply magic {magic:#x}")
        payload = recv_exact(s, length)
        if rtype == REP_ACK:
            return s
        if rtype != REP_INFO:
            raise RuntimeError(f"NBD_OPT_GO failed: reply type {rtype:#x} {payload!r}")


def request(s, cmd, cookie, offset, length, payload=b""):
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, cookie, offset, length) + payload)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("socket")
    p.add_argument("export")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--size", type=int, default=32 << 20)
    p.add_argument("--ready", default="")
    p.add_argument("--hold", type=float, default=3600.0)
    args = p.parse_args()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    conns = []
    for i in range(args.connections):
        s = connect(args.socket, args.export)
        off = (i * args.size) % (1 << 30)
        if i % 2 == 0:
            request(s, CMD_WRITE, 1, off, args.size, payload=b"\xa5" * 16)
        else:
            for k in range(4):
                request(s, CMD_READ, k + 1, off, args.size)
        conns.append(s)

    msg = f"ready {len(conns)}\n"
    if args.ready:
        with open(args.ready, "w") as f:
            f.write(msg)
    else:
        sys.stdout.write(msg)
        sys.stdout.flush()

    deadline = time.monotonic() + args.hold
    while not stop and time.monotonic() < deadline:
        time.sleep(0.2)
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
