#!/usr/bin/python3
"""Interop: untrusted clients. A table of malformed inputs, each checked for
the spec's answer while a well-behaved client keeps working, and the limits
(handshake deadline, option caps, connection and client caps, idle timeout)
with their refusal counters."""
import os
import socket
import struct
import time
import unittest
import urllib.request

import nbd

from nbdmgr_fixture import Daemon, RawClient, run

MiB = 1 << 20
SIZE = 4 * MiB
OPT_MAGIC = 0x49484156454F5054
REQ_MAGIC = 0x25609513
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3
MAX_OPTION_LENGTH = 64 * 1024  # NegotiationOptions::max_option_length
ERR = 1 << 31
ERR_UNSUP, ERR_POLICY, ERR_INVALID = ERR + 1, ERR + 2, ERR + 3
ERR_TLS_REQD, ERR_UNKNOWN, ERR_TOO_BIG = ERR + 5, ERR + 6, ERR + 9
EPERM, EIO, EINVAL, ENOSPC = 1, 5, 22, 28
(OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO,
 OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META) = 1, 2, 3, 5, 6, 7, 8, 9, 10
READ, WRITE, DISC, FLUSH, TRIM, CACHE, ZEROES, BLOCK_STATUS = 0, 1, 2, 3, 4, 5, 6, 7
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16


class Closed(Exception):
    pass


class Raw:
    """A hand-driven NBD connection to the daemon's Unix socket."""

    def __init__(self, daemon, greet=True, timeout=10):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(daemon.sock)
        if greet:
            hello = self.recv(18)
            assert hello[:16] == b"NBDMAGICIHAVEOPT", hello

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise Closed()
            buf += chunk
        return buf

    def send(self, data):
        self.s.sendall(data)

    flags_sent = False

    def flags(self, f=3):
        self.flags_sent = True
        self.send(struct.pack(">I", f))

    def option(self, opt, data=b"", length=None):
        self.send(struct.pack(">QII", OPT_MAGIC, opt,
                              len(data) if length is None else length) + data)

    def reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv(20))
        assert magic == 0x0003E889045565A9, hex(magic)
        return opt, rtype, self.recv(length)

    def final(self):
        """Skips INFO/SERVER replies; returns the closing reply type."""
        while True:
            _, rtype, _ = self.reply()
            if rtype not in (REP_INFO, REP_SERVER, 4):
                return rtype

    def go(self, name="disk", structured=True):
        if not self.flags_sent:
            self.flags()
        if structured:
            self.option(OPT_STRUCTURED)
            assert self.reply()[1] == REP_ACK
        self.option(OPT_GO, struct.pack(">I", len(name)) + name.encode() + b"\0\0")
        assert self.final() == REP_ACK
        return self

    last_offset = 0

    def request(self, cmd, offset, length, flags=0, cookie=7, payload=b""):
        self.last_offset = offset
        self.send(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, offset,
                              length) + payload)

    def read_reply(self, cookie=7, length=0):
        """(error, data) of the next reply; `length`: READ length, for the
        data of a simple reply. Structured chunks are reassembled."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == 0x67446698:
            error, c = struct.unpack(">IQ", self.recv(12))
            assert c == cookie, (c, cookie)
            return error, (self.recv(length) if error == 0 else b"")
        data = bytearray(length)
        error = 0
        while True:
            assert magic == 0x668E33EF, hex(magic)
            flags, ctype, c, n = struct.unpack(">HHQI", self.recv(16))
            assert c == cookie, (c, cookie)
            payload = self.recv(n)
            if ctype & 0x8000:
                error = struct.unpack(">I", payload[:4])[0]
            elif ctype == 1:  # OFFSET_DATA
                off = struct.unpack(">Q", payload[:8])[0]
                data[off - self.last_offset:off - self.last_offset + n - 8] = payload[8:]
            if flags & 1:
                return error, (bytes(data) if error == 0 else b"")
            magic = struct.unpack(">I", self.recv(4))[0]

    def error_of_reply(self, cookie=7, length=0):
        return self.read_reply(cookie, length)[0]

    def closed(self, timeout=10):
        """True if the server closes the connection (reads until EOF)."""
        self.s.settimeout(timeout)
        try:
            while self.s.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def name_data(name, n_info=0, infos=()):
    return (struct.pack(">I", len(name)) + name.encode() +
            struct.pack(">H", n_info) + b"".join(struct.pack(">H", i) for i in infos))


# --- the malformed-input table: (name, function(raw daemon connection)) ---
# Each function drives one fresh connection and asserts the spec's answer.

def expect_close(steps):
    def case(t, d):
        c = Raw(d)
        steps(c)
        t.assertTrue(c.closed(), "server kept the connection open")
        c.close()
    return case


def expect_option_error(opt, data, error, length=None, pre=None):
    def case(t, d):
        c = Raw(d)
        c.flags()
        if pre:
            pre(c)
        c.option(opt, data, length)
        t.assertEqual(c.reply()[1], error)
        # Negotiation goes on: a good GO still works.
        c.go("disk", structured=False)
        c.request(READ, 0, 512)
        t.assertEqual(c.error_of_reply(length=512), 0)
        c.close()
    return case


def expect_request_error(cmd, offset, length, error, flags=0, payload=b"",
                         structured=True, export="disk", meta=False):
    def case(t, d):
        c = Raw(d)
        c.flags()
        if meta:
            c.option(OPT_STRUCTURED)
            c.reply()
            q = b"base:allocation"
            c.option(OPT_SET_META, name_data(export)[:-2] + struct.pack(">I", 1) +
                     struct.pack(">I", len(q)) + q)
            c.final()
            c.go(export, structured=False)
        else:
            c.go(export, structured=structured)
        c.request(cmd, offset, length, flags, payload=payload)
        t.assertEqual(c.error_of_reply(), error)
        # The connection stays usable.
        c.request(WRITE, 4096, 512, payload=b"\x5a" * 512, cookie=8)
        t.assertEqual(c.error_of_reply(cookie=8), 0 if export == "disk" else EPERM)
        c.request(DISC, 0, 0)
        t.assertTrue(c.closed())
        c.close()
    return case


def over_options(c):
    """Sends unknown options until the server hangs up (it must, at 256)."""
    c.flags()
    for _ in range(300):
        try:
            c.option(999)
            if c.reply()[1] != ERR_UNSUP:
                break
        except (Closed, OSError):
            break


def trickle(c):
    """Slow-loris: one byte of a valid option header every 300 ms."""
    c.flags()
    header = struct.pack(">QII", OPT_MAGIC, OPT_LIST, 0)
    for b in header[:-1]:
        try:
            c.send(bytes([b]))
        except OSError:
            return
        time.sleep(0.3)


def truncated_payload(c):
    c.go()
    c.request(WRITE, 0, MiB)
    c.send(b"\xee" * 1000)
    c.s.shutdown(socket.SHUT_WR)


CASES = [
    # handshake
    ("unknown client flags", expect_close(lambda c: c.flags(0xFFFF0003))),
    ("no fixed newstyle flag", expect_close(lambda c: c.flags(0))),
    ("bad option magic", expect_close(lambda c: (c.flags(), c.send(b"\x00" * 16)))),
    ("request magic during negotiation",
     expect_close(lambda c: (c.flags(), c.request(READ, 0, 512)))),
    ("truncated option header", expect_close(
        lambda c: (c.flags(), c.send(struct.pack(">Q", OPT_MAGIC)),
                   c.s.shutdown(socket.SHUT_WR)))),
    ("EXPORT_NAME unknown export", expect_close(
        lambda c: (c.flags(), c.option(OPT_EXPORT_NAME, b"nosuch")))),
    ("EXPORT_NAME over-long", expect_close(
        lambda c: (c.flags(), c.option(OPT_EXPORT_NAME, b"x" * 70000)))),
    ("huge option length then hang-up", expect_close(
        lambda c: (c.flags(), c.option(OPT_LIST, b"", length=0xFFFFFFFF),
                   c.s.shutdown(socket.SHUT_WR)))),
    ("over-long option is skipped", expect_option_error(
        OPT_LIST, b"\0" * 70000, ERR_TOO_BIG)),
    ("GO unknown export", expect_option_error(OPT_GO, name_data("nosuch"), ERR_UNKNOWN)),
    ("GO truncated", expect_option_error(OPT_GO, b"\0\0", ERR_INVALID)),
    ("GO name longer than data", expect_option_error(
        OPT_GO, struct.pack(">I", 200) + b"disk\0\0", ERR_INVALID)),
    ("INFO request count past data", expect_option_error(
        OPT_INFO, name_data("disk", n_info=5, infos=(1,)), ERR_INVALID)),
    ("LIST with data", expect_option_error(OPT_LIST, b"junk", ERR_INVALID)),
    ("STRUCTURED_REPLY with data", expect_option_error(OPT_STRUCTURED, b"x", ERR_INVALID)),
    ("STRUCTURED_REPLY twice", expect_option_error(
        OPT_STRUCTURED, b"", ERR_INVALID,
        pre=lambda c: (c.option(OPT_STRUCTURED), c.reply()))),
    ("SET_META_CONTEXT before STRUCTURED_REPLY", expect_option_error(
        OPT_SET_META, name_data("disk")[:-2] + b"\0\0\0\0", ERR_INVALID)),
    ("SET_META_CONTEXT query past data", expect_option_error(
        OPT_SET_META, name_data("disk")[:-2] + struct.pack(">II", 1, 500) + b"base:",
        ERR_INVALID, pre=lambda c: (c.option(OPT_STRUCTURED), c.reply()))),
    ("LIST_META_CONTEXT unknown export", expect_option_error(
        OPT_LIST_META, name_data("nosuch")[:-2] + b"\0\0\0\0", ERR_UNKNOWN)),
    ("unknown option", expect_option_error(999, b"abc", ERR_UNSUP)),
    ("STARTTLS without TLS configured", expect_option_error(OPT_STARTTLS, b"", ERR_UNSUP)),
    ("too many options", expect_close(over_options)),
    ("silent client (slow-loris)", expect_close(lambda c: None)),
    ("trickling client (slow-loris)", expect_close(trickle)),
    ("ABORT", expect_close(lambda c: (c.flags(), c.option(OPT_ABORT),
                                      c.reply()))),
    # transmission
    ("bad request magic", expect_close(lambda c: (c.go(), c.send(b"\xff" * 28)))),
    ("truncated request header", expect_close(
        lambda c: (c.go(), c.send(struct.pack(">IHH", REQ_MAGIC, 0, READ)),
                   c.s.shutdown(socket.SHUT_WR)))),
    ("disconnect mid-payload", expect_close(truncated_payload)),
    ("DISC with a length", expect_close(lambda c: (c.go(), c.request(DISC, 0, 4096)))),
    ("READ past the end", expect_request_error(READ, SIZE, 512, EINVAL)),
    ("READ straddling the end", expect_request_error(READ, SIZE - 512, 1024, EINVAL)),
    ("READ offset overflow", expect_request_error(READ, (1 << 64) - 512, 1024, EINVAL)),
    ("READ of zero bytes", expect_request_error(READ, 0, 0, EINVAL)),
    ("READ above max payload", expect_request_error(READ, 0, 64 * MiB, EINVAL)),
    ("READ with unknown flag", expect_request_error(READ, 0, 512, EINVAL, flags=1 << 12)),
    ("READ with REQ_ONE", expect_request_error(READ, 0, 512, EINVAL, flags=REQ_ONE)),
    ("READ with DF, simple replies", expect_request_error(
        READ, 0, 512, EINVAL, flags=DF, structured=False)),
    ("WRITE of zero bytes", expect_request_error(WRITE, 0, 0, EINVAL)),
    ("WRITE past the end, payload consumed", expect_request_error(
        WRITE, SIZE - 512, 4096, ENOSPC, payload=b"\x25\x60\x95\x13" * 1024)),
    ("WRITE above max payload, payload consumed", expect_request_error(
        WRITE, 0, 33 * MiB, EINVAL, payload=b"\x25" * (33 * MiB))),
    ("WRITE with NO_HOLE", expect_request_error(
        WRITE, 0, 512, EINVAL, flags=NO_HOLE, payload=b"\0" * 512)),
    ("WRITE with DF", expect_request_error(
        WRITE, 0, 512, EINVAL, flags=DF, payload=b"\0" * 512)),
    ("WRITE to a read-only export", expect_request_error(
        WRITE, 0, 512, EPERM, payload=b"\0" * 512, export="ro")),
    ("TRIM past the end", expect_request_error(TRIM, SIZE, 512, EINVAL)),
    ("TRIM with FAST_ZERO", expect_request_error(TRIM, 0, 512, EINVAL, flags=FAST_ZERO)),
    ("WRITE_ZEROES past the end", expect_request_error(ZEROES, SIZE, 512, ENOSPC)),
    ("WRITE_ZEROES of zero bytes", expect_request_error(ZEROES, 0, 0, EINVAL)),
    ("CACHE past the end", expect_request_error(CACHE, SIZE, 512, EINVAL)),
    ("BLOCK_STATUS without a context", expect_request_error(BLOCK_STATUS, 0, 512, EINVAL)),
    ("BLOCK_STATUS past the end", expect_request_error(
        BLOCK_STATUS, SIZE, 512, EINVAL, meta=True)),
    ("unknown command", expect_request_error(77, 0, 512, EINVAL)),
    ("TRIM on a read-only export", expect_request_error(TRIM, 0, 512, EPERM, export="ro")),
]


class MalformedInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(["name=disk,backend=memory,size=4MiB",
                        "name=ro,backend=memory,size=4MiB,read-only=true"],
                       extra=["--handshake-timeout", "2s"]).start()
        # A well-behaved client connected throughout.
        cls.good = nbd.NBD()
        cls.good.connect_uri(cls.d.uri("disk"))
        cls.pattern = os.urandom(65536)
        cls.good.pwrite(cls.pattern, 2 * MiB)

    @classmethod
    def tearDownClass(cls):
        cls.good.shutdown()
        cls.d.stop()

    def check_good_clients(self):
        self.assertEqual(self.good.pread(65536, 2 * MiB), self.pattern)
        fresh = nbd.NBD()
        fresh.connect_uri(self.d.uri("disk"))
        self.assertEqual(fresh.pread(65536, 2 * MiB), self.pattern)
        fresh.shutdown()

    def test_table(self):
        self.assertGreaterEqual(len(CASES), 40)
        for name, case in CASES:
            with self.subTest(case=name):
                case(self, self.d)
                self.check_good_clients()
        self.assertIsNone(self.d.proc.poll(), "the daemon died")

    def test_disconnect_mid_payload_writes_nothing(self):
        c = Raw(self.d)
        truncated_payload(c)
        self.assertTrue(c.closed())
        c2 = Raw(self.d)
        c2.flags()
        c2.go()
        c2.request(READ, 0, 1000)
        error, data = c2.read_reply(length=1000)
        self.assertEqual(error, 0)
        # The write never completed: nothing of it is visible.
        self.assertNotIn(b"\xee" * 16, data)


class LimitsTest(unittest.TestCase):
    def scrape(self, d):
        with urllib.request.urlopen(f"http://{d.metrics}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("nbdmgr_limit_refusals_total{"):
                reason = line.split('"')[1]
                out[reason] = float(line.rsplit(" ", 1)[1])
        return out

    def wait_refusal(self, d, reason, n):
        deadline = time.time() + 10
        while self.scrape(d).get(reason) != n and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.scrape(d).get(reason), n)

    def test_max_clients_per_export(self):
        d = Daemon(["name=disk,backend=memory,size=1MiB,max-clients=2",
                    "name=other,backend=memory,size=1MiB"]).start()
        self.addCleanup(d.stop)
        a, b = Raw(d), Raw(d)
        a.flags(), b.flags()
        a.go(), b.go()
        c = Raw(d)
        c.flags()
        c.option(OPT_GO, name_data("disk"))
        self.assertEqual(c.final(), ERR_POLICY)
        c.go("other")  # other exports are unaffected
        self.wait_refusal(d, "max_clients", 1)
        a.request(DISC, 0, 0)
        self.assertTrue(a.closed())
        deadline = time.time() + 5
        while True:
            e = Raw(d)
            e.flags()
            e.option(OPT_GO, name_data("disk"))
            if e.final() == REP_ACK or time.time() > deadline:
                break
            e.close()
            time.sleep(0.05)
        e.request(READ, 0, 512)
        self.assertEqual(e.error_of_reply(length=512), 0)

    def test_max_connections(self):
        d = Daemon(["name=disk,backend=memory,size=1MiB"],
                   extra=["--max-connections", "3"]).start()
        self.addCleanup(d.stop)
        held = [Raw(d) for _ in range(3)]
        extra = Raw(d, greet=False)
        self.assertTrue(extra.closed())
        self.wait_refusal(d, "max_connections", 1)
        held[0].close()
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                Raw(d).go()
                break
            except (Closed, AssertionError, OSError):
                time.sleep(0.05)
        else:
            self.fail("a slot never came free")

    def test_handshake_deadline(self):
        d = Daemon(["name=disk,backend=memory,size=1MiB"],
                   extra=["--handshake-timeout", "500ms"]).start()
        self.addCleanup(d.stop)
        c = Raw(d)
        t0 = time.time()
        self.assertTrue(c.closed(timeout=10))
        self.assertLess(time.time() - t0, 9)
        self.wait_refusal(d, "handshake_timeout", 1)
        # A client that finishes in time keeps its connection past the deadline.
        ok = Raw(d)
        ok.flags()
        ok.go()
        time.sleep(1)
        ok.request(READ, 0, 512)
        self.assertEqual(ok.error_of_reply(length=512), 0)

    def test_idle_timeout(self):
        d = Daemon(["name=disk,backend=memory,size=1MiB"],
                   extra=["--idle-timeout", "1s"]).start()
        self.addCleanup(d.stop)
        busy = nbd.NBD()
        busy.connect_uri(d.uri("disk"))
        idle = Raw(d)
        idle.flags()
        idle.go()
        # The busy client keeps sending; the idle one is dropped.
        deadline = time.time() + 3
        while time.time() < deadline:
            busy.pread(512, 0)
            time.sleep(0.1)
        self.assertTrue(idle.closed(timeout=5))
        busy.pread(512, 0)
        self.wait_refusal(d, "idle_timeout", 1)
        busy.shutdown()

    def test_option_caps_are_counted(self):
        d = Daemon(["name=disk,backend=memory,size=1MiB"]).start()
        self.addCleanup(d.stop)
        c = Raw(d)
        over_options(c)
        self.assertTrue(c.closed())
        c = Raw(d)
        c.flags()
        c.option(OPT_LIST, b"\0" * 70000)
        self.assertEqual(c.reply()[1], ERR_TOO_BIG)
        self.wait_refusal(d, "too_many_options", 1)
        self.wait_refusal(d, "option_too_long", 1)
        # Refusals are logged, but not once per client.
        for _ in range(20):
            c = Raw(d)
            c.flags()
            c.option(OPT_LIST, b"\0" * 70000)
            c.reply()
            c.close()
        self.wait_refusal(d, "option_too_long", 21)
        self.assertLessEqual(d.logs().count("refused (option_too_long)"), 2)


def vm_kib(pid, field):
    """A VmRSS/VmHWM line of /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class HandshakeMemoryTest(unittest.TestCase):
    """Issue 13: a client-chosen count must not multiply handshake memory.
    One OPT_INFO may list NBD_INFO_DESCRIPTION ~32,000 times; with a 4 KiB
    description that once built 128 MiB of replies per connection."""

    DESCRIPTION = "d" * 4096  # the longest the export config allows

    def setUp(self):
        self.d = Daemon([f"name=disk,backend=memory,size=4MiB,"
                         f"description={self.DESCRIPTION}"]).start()
        self.addCleanup(self.d.stop)

    def nbdinfo_works(self):
        out = run("nbdinfo", "--size", self.d.uri("disk")).stdout
        self.assertEqual(int(out.strip()), SIZE)

    def info_replies(self, c, opt):
        """{info type: count} of the INFO replies before the ACK."""
        seen = {}
        while True:
            o, rtype, payload = c.reply()
            self.assertEqual(o, opt)
            if rtype == REP_ACK:
                return seen
            self.assertEqual(rtype, REP_INFO, hex(rtype))
            itype = struct.unpack(">H", payload[:2])[0]
            seen[itype] = seen.get(itype, 0) + 1
            if itype == INFO_DESCRIPTION:
                self.assertEqual(payload[2:].decode(), self.DESCRIPTION)

    def test_repeated_info_requests_are_answered_once(self):
        pid = self.d.proc.pid
        self.nbdinfo_works()  # warm up: threads, first session
        base_rss = vm_kib(pid, "VmRSS")
        # The largest count that fits the option limit with the name "disk".
        n = (MAX_OPTION_LENGTH - 4 - len("disk") - 2) // 2
        self.assertGreaterEqual(n, 32760)
        payload = name_data("disk", n, [INFO_DESCRIPTION] * n)
        self.assertLessEqual(len(payload), MAX_OPTION_LENGTH)
        conns = []
        for _ in range(8):
            c = Raw(self.d)
            c.flags()
            c.option(OPT_INFO, payload)
            conns.append(c)
        # Nobody reads for a moment: replies the server built up front
        # would be held now. A well-behaved client works meanwhile.
        time.sleep(0.5)
        self.nbdinfo_works()
        held_rss = vm_kib(pid, "VmRSS")
        for c in conns:
            self.assertEqual(self.info_replies(c, OPT_INFO),
                             {INFO_EXPORT: 1, INFO_BLOCK_SIZE: 1,
                              INFO_DESCRIPTION: 1})
            # Still in sync and negotiating.
            c.option(OPT_LIST)
            self.assertEqual(c.reply()[1], REP_SERVER)
            self.assertEqual(c.reply()[1], REP_ACK)
        # Repeated NAME requests, and GO, likewise.
        for c in conns[:2]:
            c.option(OPT_GO, name_data("disk", n, [INFO_NAME] * n))
            self.assertEqual(self.info_replies(c, OPT_GO),
                             {INFO_EXPORT: 1, INFO_BLOCK_SIZE: 1, INFO_NAME: 1})
            c.request(READ, 0, 512)
            self.assertEqual(c.error_of_reply(length=512), 0)
        peak = vm_kib(pid, "VmHWM")
        for c in conns:
            c.close()
        self.nbdinfo_works()
        self.assertIsNone(self.d.proc.poll(), "the daemon died")
        # Before the fix: ~1 GiB. Generous bounds, not timing.
        bound = 32 * 1024
        self.assertLess(held_rss - base_rss, bound,
                        f"RSS {base_rss} KiB -> {held_rss} KiB with replies unread")
        self.assertLess(peak - base_rss, bound,
                        f"RSS {base_rss} KiB -> peak {peak} KiB")

    def test_duplicate_meta_context_queries_get_one_reply(self):
        c = Raw(self.d)
        c.flags()
        c.option(OPT_STRUCTURED)
        self.assertEqual(c.reply()[1], REP_ACK)
        q = b"base:allocation"
        n = (MAX_OPTION_LENGTH - 8 - len("disk")) // (4 + len(q))
        data = (struct.pack(">I", 4) + b"disk" + struct.pack(">I", n) +
                (struct.pack(">I", len(q)) + q) * n)
        self.assertLessEqual(len(data), MAX_OPTION_LENGTH)
        for opt in (OPT_LIST_META, OPT_SET_META):
            c.option(opt, data)
            o, rtype, payload = c.reply()
            self.assertEqual((o, rtype), (opt, REP_META_CONTEXT))
            self.assertEqual(payload[4:], q)
            self.assertEqual(c.reply()[1], REP_ACK)
        c.go("disk", structured=False)
        c.request(BLOCK_STATUS, 0, 4096)
        self.assertEqual(c.error_of_reply(), 0)
        c.close()


if __name__ == "__main__":
    unittest.main()
