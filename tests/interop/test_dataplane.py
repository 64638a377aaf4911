#!/usr/bin/python3
"""Interop: the real nbdmgrd driven by libnbd tools, qemu-img, qemu-io and
nbdsh, over TCP and over a Unix socket."""
import errno
import json
import os
import threading
import unittest

import nbd

from nbdmgr_fixture import Daemon, RawClient, random_file, run, sha256

MiB = 1 << 20


class DataPlaneBase:
    transport = None  # set by subclasses

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon([
            "name=mem,backend=memory,size=64MiB,description=scratch disk",
            "name=sparse,backend=memory,size=1GiB",
            "name=file,backend=file,path={}/disk.img,size=64MiB",
            "name=ro,backend=memory,size=8MiB,read-only=true",
            "name=qemu,backend=memory,size=8MiB",
        ])
        cls.d.args = [a.format(cls.d.dir) for a in cls.d.args]
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.finish()

    def uri(self, name):
        return self.d.uri(name, self.transport)

    def tmp(self, name):
        return os.path.join(self.d.dir, f"{self.transport}-{name}")

    def handle(self, name, strict=True):
        h = nbd.NBD()
        if not strict:
            h.set_strict_mode(0)
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_uri(self.uri(name))
        return h

    # --- nbdinfo ---------------------------------------------------------
    def test_nbdinfo_list(self):
        out = json.loads(run("nbdinfo", "--list", "--json", self.uri("")).stdout)
        exports = {e["export-name"]: e for e in out["exports"]}
        self.assertEqual(set(exports), {"mem", "sparse", "file", "ro", "qemu"})
        self.assertEqual(exports["mem"]["description"], "scratch disk")
        self.assertEqual(exports["mem"]["export-size"], 64 * MiB)
        self.assertTrue(exports["ro"]["is_read_only"])
        self.assertTrue(exports["mem"]["can_multi_conn"])

    def test_nbdinfo_map_sparse(self):
        h = self.handle("sparse")
        h.pwrite(b"\xaa" * MiB, 100 * MiB)
        h.shutdown()
        out = json.loads(run("nbdinfo", "--map", "--json", self.uri("sparse")).stdout)
        data = [(e["offset"], e["length"]) for e in out if e["type"] == 0]
        holes = sum(e["length"] for e in out if e["type"] == 3)
        self.assertEqual(data, [(100 * MiB, MiB)])
        self.assertEqual(holes, 1023 * MiB)

    def test_default_export_for_empty_name(self):
        out = run("nbdinfo", "--size", self.uri("")).stdout.strip()
        self.assertEqual(int(out), 64 * MiB)  # "mem" is the first --export

    # --- nbdcopy ---------------------------------------------------------
    def check_nbdcopy_round_trip(self, export):
        src, back = self.tmp(f"{export}-src.img"), self.tmp(f"{export}-back.img")
        random_file(src, 48 * MiB)
        run("nbdcopy", src, self.uri(export))
        run("nbdcopy", self.uri(export), back)
        with open(back, "r+b") as f:
            f.truncate(48 * MiB)
        self.assertEqual(sha256(src), sha256(back))

    def test_nbdcopy_both_ways_memory(self):
        self.check_nbdcopy_round_trip("mem")

    def test_nbdcopy_both_ways_file(self):
        self.check_nbdcopy_round_trip("file")

    # --- qemu ------------------------------------------------------------
    def test_qemu_img_convert_and_compare(self):
        src = self.tmp("qemu-src.img")
        random_file(src, 8 * MiB)
        # Leave a hole in the middle so convert has something to skip.
        with open(src, "r+b") as f:
            f.seek(2 * MiB)
            f.write(b"\0" * (2 * MiB))
        run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, self.uri("qemu"))
        p = run("qemu-img", "compare", "-f", "raw", "-F", "raw", src, self.uri("qemu"),
                check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("Images are identical", p.stdout)
        # And the other direction: export -> file.
        back = self.tmp("qemu-back.img")
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", self.uri("qemu"), back)
        self.assertEqual(sha256(src), sha256(back))

    def test_qemu_io_pattern_verification(self):
        p = run("qemu-io", "-f", "raw",
                "-c", "write -P 0xab 1M 2M",
                "-c", "write -z 1M 64k",
                "-c", "read -P 0xab 1088k 1984k",
                "-c", "read -P 0 1M 64k",
                "-c", "flush",
                self.uri("mem"))
        self.assertNotIn("failed", p.stdout + p.stderr)
        self.assertNotIn("mismatch", p.stdout + p.stderr)
        bad = run("qemu-io", "-f", "raw", "-c", "read -P 0xcd 1M 64k", self.uri("mem"),
                  check=False)
        self.assertIn("Pattern verification failed", bad.stdout + bad.stderr)

    # --- nbdsh -------------------------------------------------------------
    def nbdsh(self, export, script):
        # Request base:allocation before connecting, as `nbdinfo --map` does.
        run("nbdsh", "-c", "h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)",
            "-c", f"h.connect_uri({self.uri(export)!r})", "-c", script)

    def test_nbdsh_flush_fua_trim_zero(self):
        self.nbdsh("mem", """
buf = b"\\x5a" * 1048576
h.pwrite(buf, 0, nbd.CMD_FLAG_FUA)
h.flush()
assert h.pread(1048576, 0) == buf
h.trim(524288, 0)
assert h.pread(524288, 0) == bytes(524288)
h.zero(262144, 524288, nbd.CMD_FLAG_NO_HOLE)
h.zero(262144, 786432, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(524288, 524288) == bytes(524288)
assert h.can_fua() and h.can_flush() and h.can_trim() and h.can_zero()
""")

    def test_nbdsh_block_status(self):
        self.nbdsh("sparse", """
h.zero(16 * 1048576, 0)
h.pwrite(b"x" * 65536, 131072)
seen = []
def cb(metacontext, offset, entries, err):
    assert metacontext == "base:allocation"
    seen.append((offset, list(entries)))
h.block_status(1048576, 0, cb)
assert seen == [(0, [131072, 3, 65536, 0, 851968, 3])], seen
seen.clear()
h.block_status(1048576, 0, cb, nbd.CMD_FLAG_REQ_ONE)
assert seen == [(0, [131072, 3])], seen
""")

    def test_nbdsh_out_of_range_errors(self):
        self.nbdsh("mem", """
import errno
h.set_strict_mode(0)
size = h.get_size()
for fn, want in [(lambda: h.pread(512, size), errno.EINVAL),
                 (lambda: h.pwrite(b"x" * 512, size - 256), errno.ENOSPC),
                 (lambda: h.trim(1024, size), errno.EINVAL),
                 (lambda: h.zero(1024, size), errno.ENOSPC)]:
    try:
        fn()
        raise AssertionError("request past the end succeeded")
    except nbd.Error as e:
        assert e.errnum == want, (e.errnum, want)
# The connection is still usable.
h.pwrite(b"ok", 0)
assert h.pread(2, 0) == b"ok"
""")

    def test_read_only_export_refuses_writes(self):
        h = self.handle("ro", strict=False)
        self.assertTrue(h.is_read_only())
        with self.assertRaises(nbd.Error) as cm:
            h.pwrite(b"x" * 512, 0)
        self.assertEqual(cm.exception.errnum, errno.EPERM)
        self.assertEqual(h.pread(512, 0), bytes(512))
        h.shutdown()


class TcpDataPlaneTest(DataPlaneBase, unittest.TestCase):
    transport = "tcp"


class UnixDataPlaneTest(DataPlaneBase, unittest.TestCase):
    transport = "unix"

    def test_unknown_command_and_bad_flags_keep_connection(self):
        c = RawClient(self.d, "mem")
        c.request(cmd=42, offset=0, length=512, cookie=7)
        self.assertEqual(c.simple_reply(), (errno.EINVAL, 7))
        c.request(cmd=0, offset=0, length=512, flags=0x4000, cookie=8)
        self.assertEqual(c.simple_reply(), (errno.EINVAL, 8))
        c.request(cmd=1, offset=c.size, length=4, cookie=9, payload=b"abcd")
        self.assertEqual(c.simple_reply(), (errno.ENOSPC, 9))
        c.request(cmd=0, offset=0, length=4, cookie=10)
        self.assertEqual(c.simple_reply(), (0, 10))
        self.assertEqual(len(c.recv(4)), 4)
        c.close()

    def test_broken_stream_closes_only_that_connection(self):
        good = self.handle("mem")
        bad = RawClient(self.d, "mem")
        bad.s.sendall(b"\xde\xad\xbe\xef" * 7)  # bad request magic
        with self.assertRaises(EOFError):
            bad.recv(1)
        bad.close()
        # A client that dies mid-payload.
        half = RawClient(self.d, "mem")
        half.request(cmd=1, offset=0, length=MiB, payload=b"x" * 1000)
        half.close()
        good.pwrite(b"still here", 4096)
        self.assertEqual(good.pread(10, 4096), b"still here")
        good.shutdown()

    def test_many_connections_in_parallel(self):
        errors = []

        def worker(i):
            try:
                h = self.handle("mem")
                data = bytes([i]) * 262144
                for k in range(8):
                    h.pwrite(data, (i * 8 + k) * 262144 % (60 * MiB))
                    assert h.pread(262144, (i * 8 + k) * 262144 % (60 * MiB)) == data
                h.shutdown()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])


if __name__ == "__main__":
    unittest.main()
