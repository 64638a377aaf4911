#!/usr/bin/python3
"""Interop: nbdmgrd and signals, shutdown time, and socket paths it must not take.

- SIGHUP, SIGUSR1 and SIGUSR2 are logged and ignored;
- a second SIGTERM during the drain ends it at once (the final flush still
  happens);
- shutdown is bounded by --drain-timeout, even with a DRAIN delete in progress;
- an idle daemon exits promptly whatever channels and connections are open;
- a control socket path that is not a stale socket is refused and left alone,
  so a second daemon started by mistake never touches the live one's sockets.
"""
import http.client
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import unittest

import nbd

from nbdmgr_fixture import NBDCTL, Daemon, RawClient, grpc_api, run, wait_for

MiB = 1 << 20
READ = 0


def stuck_read(d, name):
    """A client with a 32 MiB READ in flight whose reply it never reads.

    The session cannot finish the request, so a graceful drain waits for it
    (the tests turn the stall timeout off).
    """
    c = RawClient(d, name)
    c.request(READ, 0, 32 * MiB)
    return c


class SignalsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nbdmgr-sig-")
        self.daemons = []
        self.closers = []

    def tearDown(self):
        for close in self.closers:
            try:
                close()
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
        for d in self.daemons:
            d.stop(signal.SIGKILL)
            if getattr(d, "log", None):
                d.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def daemon(self, exports, extra=(), sub="d"):
        workdir = os.path.join(self.dir, sub)
        os.makedirs(workdir, exist_ok=True)
        d = Daemon(exports, extra=extra, workdir=workdir)
        self.daemons.append(d)
        return d

    def assert_serving(self, d):
        self.assertIsNone(d.proc.poll(), d.logs())
        p = run("nbdinfo", "--size", d.uri("m"))
        self.assertEqual(p.stdout.strip(), str(MiB))
        self.assertIn("m", d.nbdctl("list").stdout)

    def test_sighup_sigusr1_sigusr2_are_logged_and_ignored(self):
        d = self.daemon(["name=m,backend=memory,size=1MiB"]).start()
        for sig, message in (
                (signal.SIGHUP, "received SIGHUP: configuration reload is not "
                                "supported (change exports with nbdctl); ignored"),
                (signal.SIGUSR1, "received SIGUSR1: ignored"),
                (signal.SIGUSR2, "received SIGUSR2: ignored")):
            d.proc.send_signal(sig)
            wait_for(lambda: message in d.logs(), f"the log to say: {message}",
                     timeout=15)
            self.assert_serving(d)
        self.assertEqual(d.stop(signal.SIGTERM), 0, d.logs())

    def test_second_sigterm_ends_the_drain_at_once_and_flushes(self):
        img = os.path.join(self.dir, "disk.img")
        d = self.daemon([f"name=disk,backend=file,path={img},size=64MiB"],
                        ["--drain-timeout", "60s", "--stall-timeout", "0"]).start()
        data = os.urandom(4 * MiB)
        h = nbd.NBD()
        h.connect_uri(d.uri("disk"))
        h.pwrite(data, 8 * MiB)  # acknowledged, not flushed by the client
        h.shutdown()
        c = stuck_read(d, "disk")
        self.closers.append(c.close)
        time.sleep(0.3)

        d.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "received SIGTERM, draining" in d.logs(), "the drain to start",
                 timeout=15)
        time.sleep(1.5)
        self.assertIsNone(d.proc.poll(), "the drain should wait for the stuck client:\n"
                          + d.logs())

        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        rc = d.proc.wait(timeout=30)
        elapsed = time.monotonic() - t0
        print(f"\nexit {elapsed:.3f} s after the second SIGTERM (drain timeout 60 s)")
        self.assertEqual(rc, 0, d.logs())
        self.assertLess(elapsed, 20, d.logs())
        logs = d.logs()
        self.assertIn("received SIGTERM during the drain: closing the remaining "
                      "connections now", logs)
        self.assertNotIn("flushing export", logs)  # no flush failure
        self.assertIn("stopped", logs)
        with open(img, "rb") as f:
            f.seek(8 * MiB)
            self.assertEqual(f.read(4 * MiB), data)

    def test_sigterm_during_drain_delete_is_bounded_by_drain_timeout(self):
        img = os.path.join(self.dir, "gone.img")
        d = self.daemon(["name=m,backend=memory,size=1MiB",
                         f"name=gone,backend=file,path={img},size=64MiB"],
                        ["--drain-timeout", "2s", "--stall-timeout", "0"]).start()
        c = stuck_read(d, "gone")
        self.closers.append(c.close)
        time.sleep(0.3)
        remove = subprocess.Popen(
            [NBDCTL, "--control", f"unix:{d.control}", "remove", "gone",
             "--mode", "drain", "--timeout", "1h"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.closers.append(remove.kill)
        time.sleep(1)
        self.assertIsNone(remove.poll(), "the DRAIN delete should wait for the client")

        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        rc = d.proc.wait(timeout=60)
        elapsed = time.monotonic() - t0
        print(f"\nexit {elapsed:.3f} s after SIGTERM during a 1 h DRAIN delete "
              "(--drain-timeout 2s)")
        self.assertEqual(rc, 0, d.logs())
        self.assertLess(elapsed, 20, d.logs())
        # nbdctl got an answer instead of hanging on a dead daemon.
        out, _ = remove.communicate(timeout=30)
        print(f"nbdctl remove exited {remove.returncode}: {out.strip()}")

    def test_idle_daemon_exits_promptly_with_channels_and_connections_open(self):
        d = self.daemon(["name=m,backend=memory,size=1MiB"]).start()
        # A node agent: one call made, the channel kept open...
        grpc, pb, call = grpc_api(d.control)
        call("DaemonService", "GetDaemon", pb.daemon.GetDaemonRequest(), pb.daemon.Daemon)
        # ...and a health Watch stream open (raw bytes: an empty request asks
        # for the whole server).
        channel = grpc.insecure_channel(f"unix:{d.control}")
        self.closers.append(channel.close)
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch",
                                     request_serializer=lambda b: b,
                                     response_deserializer=lambda b: b)(b"")
        self.assertEqual(next(watch), b"\x08\x01")  # SERVING
        threading.Thread(target=lambda: [m for m in self._drain(watch)],
                         daemon=True).start()
        # An idle NBD client and a kept-alive metrics connection.
        h = nbd.NBD()
        h.connect_uri(d.uri("m"))
        host, port = d.metrics.rsplit(":", 1)
        scrape = http.client.HTTPConnection(host, int(port), timeout=10)
        self.closers.append(scrape.close)
        scrape.request("GET", "/metrics")
        self.assertEqual(scrape.getresponse().read()[:1], b"#")
        time.sleep(0.5)

        t0 = time.monotonic()
        rc = d.stop(signal.SIGTERM)
        elapsed = time.monotonic() - t0
        print(f"\nidle exit {elapsed:.3f} s after SIGTERM (5.5 s before the fix)")
        self.assertEqual(rc, 0, d.logs())
        self.assertLess(elapsed, 3, d.logs())

    @staticmethod
    def _drain(stream):
        try:
            yield from stream
        except Exception:  # noqa: BLE001 - the daemon going away ends it
            return


class SocketPathTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nbdmgr-sock-")
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            d.stop(signal.SIGKILL)
            if getattr(d, "log", None):
                d.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def daemon(self, sub):
        workdir = os.path.join(self.dir, sub)
        os.makedirs(workdir)
        d = Daemon(["name=m,backend=memory,size=1MiB"], workdir=workdir)
        self.daemons.append(d)
        return d

    def start_fails(self, d):
        p = subprocess.run(d.args, capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertFalse(os.path.exists(d.ready))
        return p.stderr

    def test_regular_file_at_control_path_is_refused_and_left_intact(self):
        d = self.daemon("d")
        with open(d.control, "w") as f:
            f.write("not a socket\n")
        err = self.start_fails(d)
        self.assertIn(f"control socket {d.control}: the path exists and is not a socket",
                      err)
        with open(d.control) as f:
            self.assertEqual(f.read(), "not a socket\n")
        self.assertFalse(os.path.exists(d.sock), "its own NBD socket is removed")

    def test_stale_control_socket_is_replaced_and_removed_on_exit(self):
        d = self.daemon("d")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(d.control)  # bound, never listening: what a kill leaves
        stale.close()
        d.start()
        self.assertIn("m", d.nbdctl("list").stdout)
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists(d.control))
        self.assertFalse(os.path.exists(d.sock))

    def assert_untouched(self, first, control_ino, nbd_ino):
        self.assertTrue(stat.S_ISSOCK(os.lstat(first.control).st_mode))
        self.assertEqual(os.lstat(first.control).st_ino, control_ino)
        self.assertEqual(os.lstat(first.sock).st_ino, nbd_ino)
        self.assertIn("m", first.nbdctl("list").stdout)
        run("nbdinfo", "--size", first.uri("m"))

    def test_second_daemon_on_the_same_control_path_touches_nothing(self):
        first = self.daemon("first").start()
        control_ino = os.lstat(first.control).st_ino
        nbd_ino = os.lstat(first.sock).st_ino
        # Its own NBD socket, state dir and ports; only the control path is
        # the live daemon's.
        second = self.daemon("second")
        i = second.args.index("--control-listen")
        second.args[i + 1] = f"unix:{first.control}"
        err = self.start_fails(second)
        self.assertIn(f"control socket {first.control}: another process is serving on this socket",
                      err)
        self.assertFalse(os.path.exists(second.sock))
        self.assert_untouched(first, control_ino, nbd_ino)
        self.assertEqual(first.stop(), 0)
        self.assertFalse(os.path.exists(first.control))

    def test_second_daemon_with_the_same_sockets_touches_nothing(self):
        # The same configuration started twice (only the state dir differs).
        first = self.daemon("first").start()
        control_ino = os.lstat(first.control).st_ino
        nbd_ino = os.lstat(first.sock).st_ino
        second = self.daemon("second")
        i = second.args.index("--nbd-listen", second.args.index("--nbd-listen") + 1)
        second.args[i + 1] = f"unix:{first.sock}"
        i = second.args.index("--control-listen")
        second.args[i + 1] = f"unix:{first.control}"
        err = self.start_fails(second)
        self.assertIn(f"unix:{first.sock}: another process is serving on this socket",
                      err)
        self.assert_untouched(first, control_ino, nbd_ino)
        self.assertEqual(first.stop(), 0)

    def test_two_daemons_started_at_once_on_one_control_path(self):
        # Both may judge the path free at the same moment: the lock next to
        # the socket lets exactly one of them have it, every time.
        for i in range(8):
            control = os.path.join(self.dir, f"control{i}.sock")
            pair = []
            for who in ("a", "b"):
                d = self.daemon(f"{who}{i}")
                d.args[d.args.index("--control-listen") + 1] = f"unix:{control}"
                d.control = control
                pair.append(d)
            procs = [subprocess.Popen(d.args, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True) for d in pair]
            wait_for(lambda: any(p.poll() is not None for p in procs) or
                     all(os.path.exists(d.ready) for d in pair), "both to settle",
                     timeout=15)
            time.sleep(0.2)
            alive = [(d, p) for d, p in zip(pair, procs) if p.poll() is None]
            try:
                self.assertEqual(len(alive), 1, f"round {i}: {len(alive)} daemons run")
                d, p = alive[0]
                wait_for(lambda: os.path.exists(d.ready), "the winner to be ready",
                         timeout=15)
                self.assertIn("m", d.nbdctl("list").stdout)
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                        self.assertEqual(p.wait(timeout=30), 0)
                    p.stderr.close()
            self.assertFalse(os.path.exists(control))

    def test_ready_file_temporary_does_not_follow_a_planted_symlink(self):
        d = self.daemon("d")
        victim = os.path.join(self.dir, "victim")
        with open(victim, "w") as f:
            f.write("keep\n")
        os.symlink(victim, d.ready + ".tmp")
        d.start()
        with open(victim) as f:
            self.assertEqual(f.read(), "keep\n")
        self.assertFalse(os.path.islink(d.ready))
        self.assertFalse(os.path.lexists(d.ready + ".tmp"))
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
