#!/usr/bin/python3
"""Smoke test of the throwaway Ceph cluster fixture (ceph_cluster.py) itself.

Needs the Ceph packages of deploy/install-deps.sh; runs in a few seconds.
"""
import errno
import json
import os
import socket
import sys
import time
import unittest

import rados
import rbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ceph_cluster  # noqa: E402
from ceph_cluster import CephCluster, CephClusterError  # noqa: E402

MiB = 1 << 20


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def procs_using(path):
    """PIDs of processes whose command line mentions `path` (e.g. a cluster's dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if path.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


class Gone:
    """Asserts that a stopped cluster left nothing behind."""

    @staticmethod
    def check(tc, pids, d):
        tc.assertTrue(pids, "no daemon PIDs were recorded")
        for name, pid in pids.items():
            tc.assertFalse(pid_alive(pid), f"{name} (pid {pid}) still running after stop()")
        tc.assertEqual(procs_using(d), [], f"processes still use {d}")
        tc.assertFalse(os.path.exists(d), f"{d} still exists after stop()")


class ClusterIO(unittest.TestCase):
    """One cluster for I/O, locking and user tests."""

    @classmethod
    def setUpClass(cls):
        cls.c = CephCluster()
        cls.c.start()
        log(f"\nceph cluster started in {cls.c.start_seconds:.2f} s: {cls.c.dir}, "
            f"mon port {cls.c.mon_port}, pids {cls.c.pids}")

    @classmethod
    def tearDownClass(cls):
        pids, d = cls.c.pids, cls.c.dir
        cls.c.stop()
        log(f"ceph cluster stopped in {cls.c.stop_seconds:.2f} s")
        # a failure here is reported as an error of the class
        Gone.check(unittest.TestCase(), pids, d)

    def open(self, name, rados_conn=None, **kw):
        r = rados_conn or self.c.rados()
        if rados_conn is None:
            self.addCleanup(r.shutdown)
        io = r.open_ioctx("rbd")
        self.addCleanup(io.close)
        img = rbd.Image(io, name, **kw)
        self.addCleanup(img.close)
        return r, img

    def test_attributes(self):
        c = self.c
        self.assertEqual(c.user, "admin")
        self.assertTrue(os.path.isfile(c.conf) and os.path.isfile(c.keyring))
        with open(c.conf) as f:
            conf = f.read()
        self.assertIn(f"127.0.0.1:{c.mon_port}", conf)
        self.assertIn(c.keyring, conf)
        r = c.rados()
        try:
            self.assertEqual(r.get_fsid(), c.fsid)
            self.assertIn("rbd", r.list_pools())
        finally:
            r.shutdown()
        self.assertIn("HEALTH_OK", c.ceph("health"))

    def test_image_write_read(self):
        self.c.create_image("io", 64 * MiB)
        _, img = self.open("io")
        self.assertEqual(img.size(), 64 * MiB)
        data = os.urandom(MiB)
        self.assertEqual(img.write(data, 3 * MiB), MiB)
        img.flush()
        self.assertEqual(img.read(3 * MiB, MiB), data)
        # a second connection sees the data
        _, img2 = self.open("io", read_only=True)
        self.assertEqual(img2.read(3 * MiB, MiB), data)

    def test_freeze_and_thaw(self):
        # Every thread of a frozen OSD is stopped, so I/O sent right after
        # freeze() stays unanswered (a bare SIGSTOP did not guarantee that on
        # a loaded machine); after thaw() it completes.
        self.c.create_image("frozen", 8 * MiB)
        _, img = self.open("frozen")
        img.write(b"\x01" * 4096, 0)
        pid = self.c.pids["osd.0"]
        self.c.freeze("osd.0")
        thawed = False
        try:
            states = CephCluster._thread_states(pid)
            self.assertTrue(states and all(s in "Tt" for s in states), states)
            done = []
            comps = [img.aio_write(b"\x02" * 4096, 4096 * (i + 1),
                                   lambda c: done.append(c.get_return_value()))
                     for i in range(8)]
            time.sleep(1)
            self.assertEqual(done, [], "a write completed while the OSD was frozen")
            self.c.thaw("osd.0")
            thawed = True
            self.assertNotIn("T", "".join(CephCluster._thread_states(pid)))
            for comp in comps:
                comp.wait_for_complete_and_cb()
            self.assertEqual(sorted(done), [0] * 8)
            self.assertEqual(img.read(4096, 4096 * 8), b"\x02" * 4096 * 8)
        finally:
            if not thawed:
                self.c.thaw("osd.0")

    def test_exclusive_lock_and_fencing(self):
        self.c.create_image("lock", 64 * MiB)
        r1, img1 = self.open("lock")
        _, img2 = self.open("lock")
        a, b = os.urandom(4096), os.urandom(4096)

        img1.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
        self.assertTrue(img1.is_exclusive_lock_owner())
        img1.write(a, 0)
        with self.assertRaises(rbd.ReadOnlyImage) as cm:
            img2.write(b, 0)
        self.assertEqual(cm.exception.errno, errno.EROFS)
        with self.assertRaises(rbd.ReadOnlyImage):
            img2.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)

        owners = list(img2.lock_get_owners())
        self.assertEqual(len(owners), 1, owners)
        self.assertEqual(owners[0]["mode"], rbd.RBD_LOCK_MODE_EXCLUSIVE)
        img2.lock_break(rbd.RBD_LOCK_MODE_EXCLUSIVE, owners[0]["owner"])

        # the old holder is blocklisted: fenced
        with self.assertRaises(rbd.ConnectionShutdown) as cm:
            img1.write(b, 0)
        self.assertEqual(cm.exception.errno, errno.ESHUTDOWN)
        # Ceph 16.2.15 prints two JSON arrays (addresses, then address ranges): take the first
        blocklist, _ = json.JSONDecoder().raw_decode(
            self.c.mon_command({"prefix": "osd blocklist ls", "format": "json"}))
        self.assertIn(r1.get_addrs(), [e["addr"] for e in blocklist])
        # the new client takes over and writes
        img2.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
        img2.write(b, 0)
        self.assertEqual(img2.read(0, 4096), b)

    def test_restricted_users(self):
        self.c.create_image("users", 64 * MiB)
        ro = self.c.add_user("ro", {"mon": "profile rbd", "osd": "profile rbd-read-only"})
        self.assertTrue(os.path.isfile(ro))
        r = self.c.rados("ro", ro)
        self.addCleanup(r.shutdown)
        _, img = self.open("users", rados_conn=r, read_only=True)
        self.assertEqual(img.read(0, 4096), bytes(4096))
        with self.assertRaises(rbd.PermissionError):  # read-write open needs write caps
            self.open("users", rados_conn=r)

        none = self.c.add_user("none", {})
        with self.assertRaises(rados.PermissionDeniedError):
            self.c.rados("none", none, timeout=10).shutdown()
        # a user the cluster does not know (the conf's keyring has only client.admin)
        with self.assertRaises(rados.PermissionDeniedError):
            self.c.rados("ghost", timeout=10).shutdown()


class Lifecycle(unittest.TestCase):
    def test_context_manager_and_idempotent_stop(self):
        with CephCluster(pool=None) as c:
            pids, d = c.pids, c.dir
            self.assertEqual(sorted(pids), ["mon.a", "osd.0"])
            self.assertTrue(all(pid_alive(p) for p in pids.values()))
        log(f"\nno-pool cluster: start {c.start_seconds:.2f} s, stop {c.stop_seconds:.2f} s")
        Gone.check(self, pids, d)
        c.stop()  # again: no-op
        self.assertIsNone(c.dir)

    def test_two_clusters_at_once(self):
        with CephCluster() as a, CephCluster() as b:
            self.assertNotEqual(a.mon_port, b.mon_port)
            self.assertNotEqual(a.fsid, b.fsid)
            a.create_image("x", 64 * MiB)
            b.create_image("x", 64 * MiB)
            ra, rb = a.rados(), b.rados()
            try:
                with ra.open_ioctx("rbd") as ia, rb.open_ioctx("rbd") as ib:
                    with rbd.Image(ia, "x") as xa, rbd.Image(ib, "x") as xb:
                        xa.write(b"a" * 4096, 0)
                        xb.write(b"b" * 4096, 0)
                        self.assertEqual(xa.read(0, 4096), b"a" * 4096)
                        self.assertEqual(xb.read(0, 4096), b"b" * 4096)
                osd_ports = [o["public_addrs"]["addrvec"][0]["addr"] for c in (a, b)
                             for o in json.loads(
                                 c.mon_command({"prefix": "osd dump", "format": "json"}))["osds"]]
                log(f"\ntwo clusters: starts {a.start_seconds:.2f} s + {b.start_seconds:.2f} s, "
                    f"mon ports {a.mon_port}, {b.mon_port}, OSD public addrs {osd_ports}")
            finally:
                ra.shutdown()
                rb.shutdown()
            pids = {**{"a." + k: v for k, v in a.pids.items()},
                    **{"b." + k: v for k, v in b.pids.items()}}
            dirs = (a.dir, b.dir)
        for d in dirs:
            Gone.check(self, {k: v for k, v in pids.items()}, d)

    def test_failure_half_way_cleans_up(self):
        seen = {}

        class Broken(CephCluster):
            def _wait_osd_up(self, osd_id):
                seen.update(pids=self.pids, dir=self.dir)
                raise CephClusterError("injected failure after the OSD was spawned")

        with self.assertRaises(CephClusterError):
            Broken().start()
        self.assertEqual(sorted(seen["pids"]), ["mon.a", "osd.0"])
        Gone.check(self, seen["pids"], seen["dir"])

    def test_mon_port_taken_is_retried(self):
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen()
        self.addCleanup(held.close)
        real, calls = ceph_cluster._free_port_pair, []

        def first_taken():
            calls.append(1)
            return held.getsockname()[1] if len(calls) == 1 else real()
        ceph_cluster._free_port_pair = first_taken
        self.addCleanup(setattr, ceph_cluster, "_free_port_pair", real)
        with CephCluster(pool=None) as c:
            self.assertEqual(len(calls), 2)
            self.assertNotEqual(c.mon_port, held.getsockname()[1])


if __name__ == "__main__":
    unittest.main()
