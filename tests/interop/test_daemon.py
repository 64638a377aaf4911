#!/usr/bin/python3
"""Interop: nbdmgrd as a process: flags, start-up errors, drain on signals."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import nbd

from nbdmgr_fixture import NBDMGRD, Daemon, random_file, run, sha256

MiB = 1 << 20


class DaemonFlagsTest(unittest.TestCase):
    def nbdmgrd(self, *args):
        return subprocess.run([NBDMGRD, *args], capture_output=True, text=True, timeout=30)

    def test_help(self):
        p = self.nbdmgrd("--help")
        self.assertEqual(p.returncode, 0)
        self.assertIn("--nbd-listen", p.stdout)
        self.assertIn("--export", p.stdout)

    def test_bad_flags_exit_2_naming_the_problem(self):
        cases = [
            (["--frobnicate"], "unknown flag --frobnicate"),
            (["--nbd-listen", "ftp:1.2.3.4:5"], "--nbd-listen"),
            (["--export", "name=x,backend=memory"], "needs a size"),
            (["--export", "name=x,backend=disk,size=1M"], "unknown backend"),
            (["--export", "name=x,backend=memory,size=1M",
              "--export", "name=x,backend=null,size=1M"], "declared twice"),
            (["--metrics-listen", "nowhere"], "--metrics-listen: expected HOST:PORT"),
            (["--request-stats", "maybe"], "--request-stats: expected on or off"),
        ]
        for args, message in cases:
            p = self.nbdmgrd(*args)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn(message, p.stderr, args)

    def test_missing_file_exits_1(self):
        p = self.nbdmgrd("--nbd-listen", "tcp:127.0.0.1:0",
                         "--export", "name=x,backend=file,path=/nonexistent/disk.img")
        self.assertEqual(p.returncode, 1)
        self.assertIn("/nonexistent/disk.img", p.stderr)

    def test_port_in_use_exits_1(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = self.nbdmgrd("--nbd-listen", f"tcp:127.0.0.1:{port}",
                         "--export", "name=x,backend=memory,size=1M")
        s.close()
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"cannot listen on tcp:127.0.0.1:{port}", p.stderr)

    def test_metrics_port_in_use_exits_1(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = self.nbdmgrd("--nbd-listen", "tcp:127.0.0.1:0", "--control-listen", "none",
                         "--state-dir", "none", "--metrics-listen", f"127.0.0.1:{port}",
                         "--export", "name=x,backend=memory,size=1M")
        s.close()
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"metrics listener 127.0.0.1:{port}", p.stderr)


class DaemonLifecycleTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nbdmgr-life-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_sigterm_drains_in_flight_writes_and_data_survives(self):
        img = os.path.join(self.dir, "disk.img")
        d = Daemon([f"name=disk,backend=file,path={img},size=64MiB"], workdir=self.dir)
        d.start()
        src = os.path.join(self.dir, "src.img")
        random_file(src, 64 * MiB)
        run("nbdcopy", src, d.uri("disk"))
        # A client keeps writing while the daemon is told to stop.
        stop = threading.Event()
        acked = []

        def writer():
            h = nbd.NBD()
            h.connect_uri(d.uri("disk"))
            block = b"\x77" * MiB
            try:
                for i in range(1000):
                    if stop.is_set():
                        break
                    h.pwrite(block, (i % 64) * MiB)
                    acked.append(i % 64)
            except nbd.Error:
                pass  # the drain closes the connection
        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.3)
        self.assertEqual(d.stop(signal.SIGTERM), 0, d.logs())
        stop.set()
        t.join(timeout=30)
        self.assertGreater(len(acked), 0)
        self.assertIn("draining", d.logs())
        # Every acknowledged block is on disk; the others are untouched.
        with open(img, "rb") as f, open(src, "rb") as s:
            for blk in range(64):
                got = f.read(MiB)
                want_src = s.read(MiB)
                if blk in acked:
                    self.assertEqual(got, b"\x77" * MiB, blk)
                else:
                    self.assertEqual(got, want_src, blk)

    def test_restart_serves_file_data_again(self):
        img = os.path.join(self.dir, "disk.img")
        d = Daemon([f"name=disk,backend=file,path={img},size=16MiB"], workdir=self.dir)
        d.start()
        src = os.path.join(self.dir, "src.img")
        random_file(src, 16 * MiB)
        run("nbdcopy", src, d.uri("disk"))
        self.assertEqual(d.stop(signal.SIGINT), 0)
        d.start()
        back = os.path.join(self.dir, "back.img")
        run("nbdcopy", d.uri("disk"), back)
        self.assertEqual(sha256(src), sha256(back))
        self.assertEqual(d.stop(), 0)

    def test_unix_socket_file_removed_on_exit_and_stale_one_replaced(self):
        d = Daemon(["name=m,backend=memory,size=1MiB"], workdir=self.dir)
        # A stale socket left by a killed daemon must not block start-up.
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(d.sock)
        stale.close()
        d.start()
        run("nbdinfo", "--size", d.uri("m"))
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists(d.sock))


if __name__ == "__main__":
    unittest.main()
