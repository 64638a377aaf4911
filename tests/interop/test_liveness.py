#!/usr/bin/python3
"""Interop: no client can hold buffer memory, a cap or the daemon hostage.

One test per hostile client of issue 13. Each runs the hostile connections
against one export while an honest libnbd client WRITEs and READs another
export, and asserts that:
  - the honest client is answered while the hostile ones sit there,
  - the daemon's RSS stays within the bound the README states
    (baseline + daemon cap + connections x per-connection fixed cost),
  - the stall watchdog drops the hostile connections, counted by reason,
  - every buffer byte comes back (the metrics return to 0).
No timing thresholds: the deadlines below only bound how long a test waits
for something that must happen.
"""
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import nbd

from nbdmgr_fixture import Daemon, scrape_metrics as metrics, wait_for

MiB = 1 << 20
REQUEST = 32 * MiB
# The README's per-connection fixed cost, rounded up: a 16 KiB read buffer,
# at most two 64 KiB reserve chunks, and reply metadata for up to 64
# requests in flight.
PER_CONNECTION = 1 * MiB
# Allocator and thread-stack noise on top of the formula.
SLACK = 64 * MiB
# Under ASan the daemon's RSS holds shadow memory and a quarantine of freed
# blocks: the bound is the release build's; the other checks still run.
SANITIZED = bool(os.environ.get("NBDMGR_SANITIZE"))

WRITE, READ, TRIM = 1, 0, 4


def refusals(d, reason):
    return metrics(d).get(f'nbdmgr_limit_refusals_total{{reason="{reason}"}}', 0)


def in_use(d):
    return metrics(d)["nbdmgr_daemon_buffer_bytes_in_use"]


def rss(d):
    with open(f"/proc/{d.proc.pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


class Hostile:
    """A raw NBD connection that sends what it is told and reads nothing."""

    def __init__(self, d, name):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(d.sock)
        self.recv(18)
        self.s.sendall(struct.pack(">I", 3))
        data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
        self.s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)
        while True:  # INFO replies, then ACK
            _, _, rtype, length = struct.unpack(">QIII", self.recv(20))
            self.recv(length)
            if rtype == 1:
                break

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def request(self, cmd, offset, length, cookie=1, payload=b""):
        self.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, cmd, cookie, offset,
                                   length) + payload)

    def dropped(self):
        """True once the server closed the connection (unread bytes skipped)."""
        self.s.settimeout(0.2)
        try:
            while True:
                if not self.s.recv(1 << 20):
                    return True
        except (socket.timeout, BlockingIOError):
            return False
        except OSError:
            return True

    def close(self):
        self.s.close()


def honest_io(test, d, name, offset=0, size=REQUEST, timeout=120):
    """A libnbd client WRITEs and READs back `size` bytes; must finish."""
    result = {}

    def run():
        try:
            h = nbd.NBD()
            h.connect_uri(d.uri(name))
            data = os.urandom(size)
            h.pwrite(data, offset)
            result["ok"] = h.pread(size, offset) == data
            h.shutdown()
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = repr(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    test.assertFalse(t.is_alive(), "the honest client was not answered while "
                     "hostile clients held their connections")
    test.assertEqual(result, {"ok": True})


class LivenessTest(unittest.TestCase):
    def start(self, victim_spec, extra):
        self.dir = tempfile.mkdtemp(prefix="nbdmgr-live-")
        self.image = os.path.join(self.dir, "victim.img")
        spec = victim_spec.replace("IMAGE", self.image)
        self.d = Daemon([spec, "name=other,backend=memory,size=256MiB"],
                        extra=extra, workdir=self.dir)
        self.d.start()
        self.hostile = []
        # Warm up: the honest export's pages and the pool exist before the
        # baseline is taken.
        honest_io(self, self.d, "other")
        self.baseline = rss(self.d)
        return self.d

    def tearDown(self):
        for h in getattr(self, "hostile", []):
            h.close()
        if hasattr(self, "d"):
            self.d.cleanup()

    def bound(self, cap):
        if SANITIZED:
            return float("inf")
        return self.baseline + cap + len(self.hostile) * PER_CONNECTION + SLACK

    def drop_and_recover(self, reason, count, timeout=60):
        """The watchdog drops every hostile connection; memory comes back."""
        d = self.d
        wait_for(lambda: refusals(d, reason) >= count,
                 f"{count} {reason} drops", timeout)
        wait_for(lambda: all(h.dropped() for h in self.hostile),
                 "the hostile connections to be closed")
        wait_for(lambda: in_use(d) == 0, "buffer memory to come back")
        self.assertEqual(refusals(d, reason), count)
        honest_io(self, d, "other", offset=64 * MiB)

    def test_stalled_write_payloads_cannot_hold_the_cap(self):
        # No per-connection limit: 32 MiB leases may fill the cap (the
        # default 16 MiB per connection would stream them).
        d = self.start("name=victim,backend=file,path=IMAGE,size=1GiB,"
                       "stall-timeout=8s",
                       ["--memory-cap", "256MiB", "--connection-memory", "none"])
        for i in range(8):
            h = Hostile(d, "victim")
            h.request(WRITE, i * REQUEST, REQUEST, payload=b"x")
            self.hostile.append(h)
        # Their leases fill the cap (8 x 32 MiB)...
        wait_for(lambda: in_use(d) >= 256 * MiB, "the stalled WRITEs to fill the cap")
        # ...and still another client, on another export, is answered.
        honest_io(self, d, "other")
        self.assertLessEqual(rss(d), self.bound(256 * MiB))
        self.drop_and_recover("stall_payload", 8)

    def test_unread_read_replies_cannot_hold_the_cap(self):
        d = self.start("name=victim,backend=file,path=IMAGE,size=1GiB,"
                       "stall-timeout=8s",
                       ["--memory-cap", "256MiB", "--connection-memory", "none"])
        for i in range(4):
            h = Hostile(d, "victim")
            for j in range(4):
                h.request(READ, (4 * i + j) * REQUEST, REQUEST, cookie=j)
            self.hostile.append(h)
        wait_for(lambda: in_use(d) >= 128 * MiB, "the unread READs to hold memory")
        honest_io(self, d, "other")
        # And the victim export itself still serves others.
        honest_io(self, d, "victim", offset=900 * MiB, size=4 * MiB)
        self.assertLessEqual(rss(d), self.bound(256 * MiB))
        self.drop_and_recover("stall_replies", 4)

    def test_default_settings_bound_what_unread_replies_hold(self):
        # Default settings: the default cap (min(1 GiB, RAM/8)) and 16 MiB per
        # connection; 16 connections x 16 unread 32 MiB READs took 8.4 GB
        # before.
        d = self.start("name=victim,backend=file,path=IMAGE,size=8GiB,"
                       "stall-timeout=10s", [])
        cap = metrics(d)["nbdmgr_daemon_buffer_cap_bytes"]
        with open("/proc/meminfo") as f:
            ram = int(re.search(r"MemTotal:\s+(\d+) kB", f.read()).group(1)) * 1024
        self.assertEqual(cap, min(1 << 30, (ram // 4096 * 4096) // 8))
        for i in range(16):
            h = Hostile(d, "victim")
            for j in range(16):
                h.request(READ, ((16 * i + j) % 256) * REQUEST, REQUEST, cookie=j)
            self.hostile.append(h)
        wait_for(lambda: in_use(d) > 0, "the unread READs to hold memory")
        honest_io(self, d, "other")
        time.sleep(2)  # let every connection take what it can
        # Each holds at most its 16 MiB, far below the cap.
        held = 16 * 16 * MiB
        self.assertLessEqual(in_use(d), held)
        self.assertLessEqual(rss(d), self.bound(held))
        self.drop_and_recover("stall_replies", 16)

    def test_a_stalled_client_holds_at_most_its_connection_memory(self):
        # The default per-connection limit, with no cap at all: 64 WRITEs of
        # 32 MiB that stop after a byte, and 64 x 4 unread 1 MiB READs.
        d = self.start("name=victim,backend=file,path=IMAGE,size=1GiB,"
                       "stall-timeout=8s", ["--memory-cap", "none"])
        for i in range(32):
            h = Hostile(d, "victim")
            h.request(WRITE, i * REQUEST, REQUEST, payload=b"x")
            self.hostile.append(h)
        for i in range(32):
            h = Hostile(d, "victim")
            for j in range(8):
                h.request(READ, (i * 8 + j) * MiB, MiB, cookie=j)
            self.hostile.append(h)
        wait_for(lambda: in_use(d) > 0, "the hostile clients to hold memory")
        honest_io(self, d, "other")
        time.sleep(2)
        held = len(self.hostile) * 16 * MiB
        self.assertLessEqual(in_use(d), held)
        self.assertLessEqual(rss(d), self.bound(held))
        wait_for(lambda: refusals(d, "stall_payload") >= 32, "32 stall_payload drops")
        self.drop_and_recover("stall_replies", 32)

    def test_pinned_pages_are_charged_and_bounded(self):
        # Zero-copy READs of a memory export pin its pages until written;
        # while a client rewrites the export, pinned old pages are memory
        # the export no longer holds. They are charged to the cap now.
        d = self.start("name=victim,backend=memory,size=512MiB,stall-timeout=8s",
                       ["--memory-cap", "128MiB"])
        for i in range(16):
            honest_io(self, d, "victim", offset=i * REQUEST)
        self.baseline = rss(d)
        for i in range(8):
            h = Hostile(d, "victim")
            for j in range(8):
                h.request(READ, ((8 * i + j) % 16) * REQUEST, REQUEST, cookie=j)
            self.hostile.append(h)
        wait_for(lambda: in_use(d) > 0, "pinned READs to show in the metrics")
        # Rewrite and trim the whole export underneath them, twice.
        h = nbd.NBD()
        h.connect_uri(d.uri("victim"))
        for _ in range(2):
            for i in range(16):
                h.trim(REQUEST, i * REQUEST)
                h.pwrite(os.urandom(REQUEST), i * REQUEST)
        h.shutdown()
        self.assertLessEqual(in_use(d), 128 * MiB)
        # Freed export pages go back to the OS on the daemon's next
        # housekeeping pass (every second); the pinned ones stay, charged.
        wait_for(lambda: rss(d) <= self.bound(128 * MiB),
                 f"RSS within {self.bound(128 * MiB)} (now {rss(d)})", 15)
        honest_io(self, d, "other")
        self.drop_and_recover("stall_replies", 8)


class StallTimeoutApiTest(unittest.TestCase):
    def test_per_export_stall_timeout_over_the_api(self):
        d = Daemon(["name=other,backend=memory,size=64MiB"])
        try:
            d.start()
            d.nbdctl("create", "s", "--memory", "64MiB", "--stall-timeout", "2s")
            got = json.loads(d.nbdctl("-o", "json", "get", "s").stdout)
            self.assertEqual(got.get("stall_timeout"), "2s")
            h = Hostile(d, "s")
            h.request(WRITE, 0, MiB, payload=b"x")
            wait_for(lambda: refusals(d, "stall_payload") == 1,
                     "the 2 s export override to drop the stalled client", 30)
            self.assertTrue(h.dropped())
            h.close()
            d.nbdctl("update", "s", "--stall-timeout", "default")
            got = json.loads(d.nbdctl("-o", "json", "get", "s").stdout)
            self.assertNotIn("stall_timeout", got)
            bad = d.nbdctl("update", "s", "--stall-timeout", "48h", check=False)
            self.assertNotEqual(bad.returncode, 0)
            self.assertIn("24h", bad.stderr)
        finally:
            d.cleanup()


MULTIPLEXER = r"""
import sys
import nbd
uri, rounds = sys.argv[1], int(sys.argv[2])
N, WAVE, SIZE = 64, 16, 4 << 20
for r in range(rounds):
    hs = []
    for i in range(N):
        h = nbd.NBD()
        h.connect_uri(uri)
        hs.append(h)
    for w in range(0, N, WAVE):
        wave = hs[w:w + WAVE]
        data = [bytearray([(r * N + w + k) % 251 + 1]) * SIZE for k in range(WAVE)]
        bufs = [nbd.Buffer.from_bytearray(b) for b in data]
        # Every WRITE is issued before any is driven; then one handle at a
        # time is polled to completion, so the others' payloads arrive only
        # after the waited-on request completes.
        cookies = [h.aio_pwrite(b, (w + k) * SIZE)
                   for k, (h, b) in enumerate(zip(wave, bufs))]
        for h, c in zip(wave, cookies):
            while not h.aio_command_completed(c):
                h.poll(-1)
        rbufs = [nbd.Buffer(SIZE) for _ in wave]
        cookies = [h.aio_pread(b, (w + k) * SIZE)
                   for k, (h, b) in enumerate(zip(wave, rbufs))]
        for h, c in zip(wave, cookies):
            while not h.aio_command_completed(c):
                h.poll(-1)
        for k, b in enumerate(rbufs):
            assert b.to_bytearray() == data[k], f"round {r} conn {w + k}: bad data"
    for h in hs:
        h.shutdown()
    print(f"round {r} ok", flush=True)
"""


class MultiplexingClientTest(unittest.TestCase):
    def test_single_threaded_client_of_64_connections_never_deadlocks(self):
        # A small cap that four 4 MiB leases fill, and a share that lets one
        # connection take all of it: the old design's circular wait (leases
        # held by connections whose payloads the client sends only after
        # the request it waits on completes) needs exactly this.
        d = Daemon(["name=m,backend=file,path=IMAGE,size=256MiB"],
                    extra=["--memory-cap", "16MiB", "--connection-share", "100"])
        d.args = [a.replace("IMAGE", os.path.join(d.dir, "m.img")) for a in d.args]
        try:
            d.start()
            p = subprocess.run([sys.executable, "-c", MULTIPLEXER, d.uri("m"), "20"],
                               capture_output=True, text=True, timeout=600)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual(p.stdout.count(" ok"), 20, p.stdout)
            wait_for(lambda: in_use(d) == 0, "buffer memory to come back")
            self.assertGreater(metrics(d)['nbdmgr_buffer_cap_full_total{export="m"}'], 0,
                               "the cap never filled: the test did not test")
        finally:
            d.cleanup()


if __name__ == "__main__":
    unittest.main()
