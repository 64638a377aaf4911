#!/usr/bin/python3
"""Interop: file exports on each I/O engine (io_uring rings, the blocking
thread pool), chosen automatically or per export, reported by nbdctl, and
the fallback on a host without io_uring (simulated with
NBDMGR_DISABLE_IO_URING=1)."""
import errno
import json
import os
import subprocess
import tempfile
import unittest

import nbd

from nbdmgr_fixture import NBDMGRD, Daemon, random_file, run, sha256, small_tmpfs

MiB = 1 << 20


def first_bytes_sha256(path, n):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(n)).hexdigest()


class FileIoBase:
    env = None
    engines = {}  # export name -> the io_engine it must report

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon([
            "name=auto,backend=file,path={0}/auto.img,size=64MiB",
            "name=threads,backend=file,path={0}/threads.img,size=64MiB,io=threads",
            "name=mem,backend=memory,size=8MiB",
        ] + cls.more_exports, env=cls.env)
        cls.d.args = [a.format(cls.d.dir) for a in cls.d.args]
        cls.d.args += ["--allow-path", cls.d.dir]
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.finish()

    def get(self, name):
        return json.loads(self.d.nbdctl("get", name, "-o", "json").stdout)

    def test_engine_is_reported(self):
        for name, engine in self.engines.items():
            self.assertEqual(self.get(name).get("io_engine"), engine, name)
        table = self.d.nbdctl("list").stdout.splitlines()
        self.assertEqual(table[0].split()[:3], ["NAME", "BACKEND", "IO"])
        rows = {line.split()[0]: line.split()[2] for line in table[1:]}
        for name, engine in self.engines.items():
            self.assertEqual(rows[name], engine, table)

    def test_round_trip_on_every_engine(self):
        src = os.path.join(self.d.dir, "src.img")
        random_file(src, 16 * MiB)
        for name in self.engines:
            if name == "mem":
                continue
            with self.subTest(export=name):
                run("nbdcopy", "-C", "4", src, self.d.uri(name))
                back = os.path.join(self.d.dir, f"{name}-back.img")
                run("qemu-img", "convert", "-f", "raw", "-O", "raw", self.d.uri(name), back)
                self.assertEqual(first_bytes_sha256(back, 16 * MiB), sha256(src))
                # What the clients saw is what the file holds.
                self.assertEqual(
                    first_bytes_sha256(os.path.join(self.d.dir, f"{name}.img"), 16 * MiB),
                    sha256(src))

    def test_fio_verify_with_deep_queues(self):
        # Many requests in flight per connection, on two connections, each
        # write read back and checked by fio itself.
        for name in self.engines:
            if name == "mem":
                continue
            with self.subTest(export=name):
                p = run("fio", "--name=v", "--ioengine=nbd", f"--uri={self.d.uri(name)}",
                        "--rw=randwrite", "--bs=4k", "--size=8M", "--iodepth=64",
                        "--numjobs=2", "--offset_increment=16M", "--verify=crc32c",
                        "--do_verify=1", "--verify_fatal=1", timeout=300, check=False)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                self.assertIn("err= 0", p.stdout)

    def test_fua_flush_trim_zero(self):
        for name in self.engines:
            if name == "mem":
                continue
            with self.subTest(export=name):
                run("nbdsh", "-c", f"h.connect_uri({self.d.uri(name)!r})", "-c", """
buf = b"\\xa5" * 1048576
h.pwrite(buf, 4194304, nbd.CMD_FLAG_FUA)
h.pwrite(b"\\x3c" * 4096, 8388608)
h.flush()
assert h.pread(1048576, 4194304) == buf
h.trim(65536, 4194304)
h.zero(65536, 4259840, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(131072, 4194304) == bytes(131072)
assert h.pread(4096, 8388608) == b"\\x3c" * 4096
""")
                with open(os.path.join(self.d.dir, f"{name}.img"), "rb") as f:
                    f.seek(8 * MiB)
                    self.assertEqual(f.read(4096), b"\x3c" * 4096)
                    f.seek(4 * MiB + 128 * 1024)
                    self.assertEqual(f.read(4096), b"\xa5" * 4096)

    def test_api_create_with_engine(self):
        path = os.path.join(self.d.dir, "api.img")
        out = json.loads(self.d.nbdctl("create", "api", "--file", path, "--size", "8MiB",
                                       "--io", "threads", "-o", "json").stdout)
        self.assertEqual(out["io_engine"], "threads")
        self.assertEqual(out["file"].get("io"), "FILE_IO_THREADS")
        self.d.nbdctl("remove", "api")
        p = self.d.nbdctl("create", "bad", "--file", path, "--size", "8MiB", "--io", "uring",
                          check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--io: expected auto, io_uring or threads", p.stderr)
        p = self.d.nbdctl("create", "bad", "--memory", "8MiB", "--io", "threads", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--io is only for --file exports", p.stderr)


class FileIoTest(FileIoBase, unittest.TestCase):
    more_exports = ["name=ring,backend=file,path={0}/ring.img,size=64MiB,io=io_uring"]
    engines = {"auto": "io_uring", "ring": "io_uring", "threads": "threads",
               "mem": "inline"}

    def test_bad_io_key_exits_2(self):
        for spec, message in [
                ("name=x,backend=file,path=/tmp/x.img,size=1M,io=uring",
                 "io: expected auto, io_uring or threads"),
                ("name=x,backend=memory,size=1M,io=threads",
                 "io is only for the file backend")]:
            p = run(NBDMGRD, "--nbd-listen", "tcp:127.0.0.1:0", "--export", spec,
                    check=False, timeout=30)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn(message, p.stderr)


class NoIoUringTest(FileIoBase, unittest.TestCase):
    """A host where io_uring cannot be used: auto falls back to threads."""
    env = {"NBDMGR_DISABLE_IO_URING": "1"}
    more_exports = []
    engines = {"auto": "threads", "threads": "threads", "mem": "inline"}

    def test_io_uring_asked_for_is_refused(self):
        path = os.path.join(self.d.dir, "ring.img")
        p = self.d.nbdctl("create", "ring", "--file", path, "--size", "8MiB",
                          "--io", "io_uring", check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("FAILED_PRECONDITION", p.stderr)
        self.assertIn("io_uring is not available", p.stderr)
        self.assertFalse(os.path.exists(path), "a refused create leaves no file")
        # The daemon serves on.
        self.assertEqual(self.get("auto")["io_engine"], "threads")
        p = run(NBDMGRD, "--nbd-listen", "tcp:127.0.0.1:0", "--export",
                f"name=x,backend=file,path={path},size=1M,io=io_uring",
                check=False, timeout=30, env=dict(os.environ, **self.env))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("io_uring is not available", p.stderr)


class FullDiskTest(unittest.TestCase):
    """A file system that fills up under each engine: the write that does not
    fit gets ENOSPC, what was acknowledged before stays, the connection and
    the daemon serve on, and writes succeed again once space is freed."""

    def setUp(self):
        self.mnt = small_tmpfs(self)

    def test_enospc_on_each_engine(self):
        for engine in ("io_uring", "threads"):
            with self.subTest(engine=engine):
                self.fill_up(engine)

    def fill_up(self, engine):
        path = os.path.join(self.mnt, f"{engine}.img")
        d = Daemon([f"name=disk,backend=file,path={path},size=16MiB,io={engine}"],
                   extra=["--allow-path", self.mnt]).start()
        self.addCleanup(d.cleanup)
        self.assertEqual(json.loads(d.nbdctl("get", "disk", "-o", "json").stdout)
                         .get("io_engine"), engine)
        h = nbd.NBD()
        h.connect_uri(d.uri("disk"))
        chunk = 256 * 1024
        written = []
        failure = None
        for i in range(16 * MiB // chunk):
            data = bytes([i + 1]) * chunk
            try:
                h.pwrite(data, i * chunk, nbd.CMD_FLAG_FUA)
            except nbd.Error as e:
                failure = e
                break
            written.append(data)
        self.assertIsNotNone(failure, "a 4 MiB file system took 16 MiB")
        # libnbd's Python binding names the errno ("ENOSPC").
        self.assertIn(failure.errno, (errno.ENOSPC, "ENOSPC"), str(failure))
        self.assertGreater(len(written), 4)
        # The connection serves on, and every acknowledged write is there.
        for i, data in enumerate(written):
            self.assertEqual(h.pread(chunk, i * chunk), data, i)
        h.flush()
        # Freeing space (trim punches holes) lets writes in again.
        h.trim(len(written) * chunk, 0)
        h.pwrite(b"\x5a" * chunk, 12 * MiB, nbd.CMD_FLAG_FUA)
        self.assertEqual(h.pread(chunk, 12 * MiB), b"\x5a" * chunk)
        h.shutdown()
        del h
        self.assertEqual(d.stop(), 0, d.logs())
        os.unlink(path)


if __name__ == "__main__":
    unittest.main()
