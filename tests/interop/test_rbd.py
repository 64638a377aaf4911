#!/usr/bin/python3
"""Interop: exports on Ceph RBD images, against a throwaway single-node Ceph
cluster (tests/interop/ceph_cluster.py) started by this test: data through
real clients (nbdcopy, qemu-img, qemu-io, nbdinfo --map, nbdsh), snapshots,
clear errors for a bad pool, image, user or cluster, and two daemons standing
for two hosts: one writer per image, a planned move, and a take-over that
fences the old holder."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import unittest

import nbd
import rbd

from ceph_cluster import CephCluster
from nbdmgr_fixture import Daemon, random_file, run, scrape_metrics, sha256, wait_for

MiB = 1 << 20


def setUpModule():
    global CLUSTER
    CLUSTER = CephCluster()
    CLUSTER.start()


def tearDownModule():
    CLUSTER.stop()


def image_bytes(name, offset, length, snapshot=None):
    """What the cluster holds, read with librbd directly (not through us)."""
    r = CLUSTER.rados()
    try:
        with r.open_ioctx("rbd") as io:
            with rbd.Image(io, name, snapshot=snapshot, read_only=True) as img:
                return img.read(offset, length)
    finally:
        r.shutdown()


class RbdTestBase(unittest.TestCase):
    def rbd_spec(self, name, image, **keys):
        spec = (f"name={name},backend=rbd,pool=rbd,image={image},"
                f"ceph-conf={CLUSTER.conf},ceph-user={CLUSTER.user}")
        for k, v in keys.items():
            spec += f",{k.replace('_', '-')}={v}"
        return spec

    def daemon(self, exports=(), extra=()):
        d = Daemon(list(exports), extra=["--allow-path", CLUSTER.dir, *extra]).start()
        self.addCleanup(d.cleanup)
        return d

    def create(self, d, name, image, *flags, check=True):
        return d.nbdctl("create", name, "--rbd", f"rbd/{image}", "--ceph-conf", CLUSTER.conf,
                        "--ceph-user", CLUSTER.user, *flags, check=check)


class RbdDataTest(RbdTestBase):
    def test_round_trip_with_fua_and_flush(self):
        d = self.daemon([self.rbd_spec("vm1", "vm1", size="32MiB")])
        info = json.loads(run("nbdinfo", "--json", d.uri("vm1")).stdout)
        e = info["exports"][0]
        self.assertEqual(e["export-size"], 32 * MiB)
        self.assertTrue(e["can_flush"])
        self.assertTrue(e["can_fua"])
        self.assertTrue(e["can_trim"])
        self.assertTrue(e["can_multi_conn"])
        src = os.path.join(d.dir, "src.img")
        random_file(src, 32 * MiB)
        run("nbdcopy", "-C", "4", src, d.uri("vm1"))
        back = os.path.join(d.dir, "back.img")
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", d.uri("vm1"), back)
        self.assertEqual(sha256(back), sha256(src))
        # FUA writes and a flush, then read behind our back with librbd.
        run("qemu-io", "-f", "raw", "-c", "write -f -P 0x5a 1M 64k", "-c", "flush",
            d.uri("vm1"))
        self.assertEqual(image_bytes("vm1", 1 * MiB, 64 * 1024), b"\x5a" * 65536)
        with open(src, "rb") as f:
            f.seek(2 * MiB)
            self.assertEqual(image_bytes("vm1", 2 * MiB, 65536), f.read(65536))
        out = json.loads(d.nbdctl("get", "vm1", "-o", "json").stdout)
        self.assertEqual(out["io_engine"], "librbd")
        self.assertEqual(out["rbd"]["image"], "vm1")
        self.assertNotEqual(out["rbd"].get("lock_owner", ""), "", out)

    def test_trim_and_zero_with_block_status(self):
        d = self.daemon([self.rbd_spec("tz", "tz", size="16MiB")])
        uri = d.uri("tz")
        # A fresh image is one hole.
        m = json.loads(run("nbdinfo", "--json", "--map", uri).stdout)
        self.assertEqual([(x["offset"], x["length"], x["type"] & 1) for x in m],
                         [(0, 16 * MiB, 1)])
        run("nbdsh", "-u", uri, "-c", """
h.pwrite(b"\\xab" * (8 << 20), 0)
h.flush()
h.trim(4 << 20, 4 << 20)
h.zero(1 << 20, 1 << 20)
assert h.pread(4 << 20, 4 << 20) == bytes(4 << 20)
assert h.pread(1 << 20, 1 << 20) == bytes(1 << 20)
assert h.pread(1 << 20, 0) == b"\\xab" * (1 << 20)
assert h.pread(1 << 20, 2 << 20) == b"\\xab" * (1 << 20)
""")
        m = json.loads(run("nbdinfo", "--json", "--map", uri).stdout)
        holes = [(x["offset"], x["length"]) for x in m if x["type"] & 1]
        data = [(x["offset"], x["length"]) for x in m if not x["type"] & 1]
        # The trimmed 4 MiB (whole objects) and everything past 8 MiB are
        # holes; the written first MiB and 2-4 MiB are data.
        covered = lambda ranges, off: any(o <= off < o + n for o, n in ranges)
        self.assertTrue(covered(holes, 5 * MiB), m)
        self.assertTrue(covered(holes, 12 * MiB), m)
        self.assertTrue(covered(data, 0), m)
        self.assertTrue(covered(data, 3 * MiB), m)
        self.assertEqual(sum(x["length"] for x in m), 16 * MiB)
        self.assertEqual(image_bytes("tz", 1 * MiB, 4096), bytes(4096))

    def test_snapshot_export_is_read_only(self):
        CLUSTER.create_image("snapsrc", 8 * MiB)
        r = CLUSTER.rados()
        try:
            with r.open_ioctx("rbd") as io, rbd.Image(io, "snapsrc") as img:
                img.write(b"\x11" * 65536, 0)
                img.create_snap("s1")
                img.write(b"\x22" * 65536, 0)
        finally:
            r.shutdown()
        d = self.daemon([self.rbd_spec("snap", "snapsrc", snapshot="s1")])
        p = run("nbdsh", "-u", d.uri("snap"), "-c", """
assert h.is_read_only()
assert h.pread(65536, 0) == b"\\x11" * 65536
try:
    h.pwrite(b"x" * 512, 0)
    raise SystemExit("a write to a snapshot succeeded")
except nbd.Error as e:
    print("refused:", e)
""")
        self.assertIn("refused", p.stdout)
        self.assertEqual(image_bytes("snapsrc", 0, 4), b"\x22" * 4)
        # Over the API too: POOL/IMAGE@SNAP.
        out = json.loads(self.create(d, "snap2", "snapsrc@s1", "-o", "json").stdout)
        self.assertTrue(out["read_only"])
        self.assertEqual(out["rbd"]["snapshot"], "s1")

    def test_bad_pool_image_user_and_cluster(self):
        CLUSTER.create_image("good", 4 * MiB)
        d = self.daemon()
        cases = [
            (["--rbd", "nopool/good"], "NOT_FOUND", "nopool"),
            (["--rbd", "rbd/missing"], "NOT_FOUND", "missing"),
            (["--rbd", "rbd/good", "--ceph-user", "nobody"], "PERMISSION_DENIED", "nobody"),
        ]
        for args, code, named in cases:
            with self.subTest(args=args):
                p = d.nbdctl("create", "bad", *args, "--ceph-conf", CLUSTER.conf,
                             *([] if "--ceph-user" in args else ["--ceph-user", "admin"]),
                             check=False)
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertIn(code, p.stderr)
                self.assertIn(named, p.stderr)
        # A conf outside --allow-path is refused before librados reads it.
        p = d.nbdctl("create", "bad", "--rbd", "rbd/good", "--ceph-conf", "/etc/passwd",
                     check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("PERMISSION_DENIED", p.stderr)
        # ... also through a symbolic link inside the allowed directory, and
        # only a regular file is read.
        link = os.path.join(CLUSTER.dir, "escape.conf")
        if not os.path.lexists(link):
            os.symlink("/etc/passwd", link)
        subdir = os.path.join(CLUSTER.dir, "not-a-file.conf")
        os.makedirs(subdir, exist_ok=True)
        for conf, code in [(link, "PERMISSION_DENIED"), (subdir, "INVALID_ARGUMENT")]:
            p = d.nbdctl("create", "bad", "--rbd", "rbd/good", "--ceph-conf", conf,
                         check=False)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn(code, p.stderr)
        # Usage errors from nbdctl itself.
        p = d.nbdctl("create", "bad", "--rbd", "good", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--rbd: expected POOL/IMAGE", p.stderr)
        # The daemon serves on: a good one works after all of that.
        self.create(d, "good", "good")
        run("nbdsh", "-u", d.uri("good"), "-c", "h.pwrite(b'ok' * 256, 0); h.flush()")
        self.assertEqual(image_bytes("good", 0, 4), b"okok")
        # A bad spec at startup: exit 1 with the reason.
        p = subprocess.run(Daemon([self.rbd_spec("x", "missing")]).args, capture_output=True,
                           text=True, timeout=60)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("missing", p.stderr)


class RbdTwoHostsTest(RbdTestBase):
    """Two daemons on one machine stand for two hosts."""

    def test_second_writer_is_refused_then_planned_move(self):
        CLUSTER.create_image("mv", 16 * MiB)
        a = self.daemon()
        b = self.daemon()
        self.create(a, "mv", "mv")
        p = self.create(b, "mv", "mv", check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("FAILED_PRECONDITION", p.stderr)
        self.assertIn("client.", p.stderr)  # names the holder
        # Read-only exports take no lock: both hosts may serve them.
        self.create(b, "mv-ro", "mv", "--read-only")
        # A writes, acknowledged with a flush; then the planned move.
        src = os.path.join(a.dir, "src.img")
        random_file(src, 16 * MiB)
        run("nbdcopy", src, a.uri("mv"))
        a.nbdctl("remove", "mv", "--mode", "drain")
        b.nbdctl("remove", "mv-ro")
        self.create(b, "mv", "mv")
        back = os.path.join(b.dir, "back.img")
        run("nbdcopy", b.uri("mv"), back)
        self.assertEqual(sha256(back), sha256(src))

    def test_api_export_survives_a_clean_restart(self):
        CLUSTER.create_image("keep", 8 * MiB)
        a = self.daemon()
        self.create(a, "keep", "keep")
        run("nbdsh", "-u", a.uri("keep"), "-c", "h.pwrite(b'\\x07' * 4096, 0); h.flush()")
        self.assertEqual(a.stop(), 0, a.logs())  # releases the lock
        a.start()  # the same state directory: the export is recreated
        out = json.loads(a.nbdctl("get", "keep", "-o", "json").stdout)
        self.assertEqual(out["state"], "STATE_ACTIVE", out)
        self.assertIn("(this daemon)", out["rbd"]["lock_owner"])
        run("nbdsh", "-u", a.uri("keep"), "-c", "assert h.pread(4096, 0) == b'\\x07' * 4096")
        # And it still holds the lock: another host is refused.
        b = self.daemon()
        p = self.create(b, "keep", "keep", check=False)
        self.assertIn("FAILED_PRECONDITION", p.stderr)

    def test_restart_after_a_crash_reports_the_held_lock(self):
        # The crashed daemon's client still looks alive to Ceph for ~30 s:
        # the persisted export comes back FAILED, naming the lock, and the
        # daemon serves its other exports.
        CLUSTER.create_image("crash", 8 * MiB)
        a = self.daemon(["name=mem,backend=memory,size=1MiB"])
        self.create(a, "crash", "crash")
        a.stop(signal.SIGKILL)
        a.start()
        out = json.loads(a.nbdctl("get", "crash", "-o", "json").stdout)
        self.assertEqual(out["state"], "STATE_FAILED", out)
        self.assertIn("lock", out["failure"])
        run("nbdinfo", a.uri("mem"))

    def test_take_over_after_sigkill_and_fencing_of_a_live_holder(self):
        CLUSTER.create_image("fo", 8 * MiB)
        a = self.daemon()
        self.create(a, "fo", "fo")
        run("nbdsh", "-u", a.uri("fo"), "-c", "h.pwrite(b'\\x01' * 65536, 0); h.flush()")
        # A dies without releasing its lock; B takes over at once.
        a.stop(signal.SIGKILL)
        b = self.daemon()
        p = self.create(b, "fo", "fo", check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("FAILED_PRECONDITION", p.stderr)
        self.create(b, "fo", "fo", "--take-over")
        self.assertEqual(image_bytes("fo", 0, 65536), b"\x01" * 65536)
        # Now C takes over from B while B still runs with a client connected:
        # B is fenced, its client's writes fail, and not a byte of them lands.
        h = nbd.NBD()
        h.connect_uri(b.uri("fo"))
        h.pwrite(b"\x02" * 65536, 0)
        h.flush()
        c = self.daemon()
        self.create(c, "fo", "fo", "--take-over")
        run("nbdsh", "-u", c.uri("fo"), "-c", "h.pwrite(b'\\x03' * 65536, 0); h.flush()")
        failed = 0
        for i in range(4):
            try:
                h.pwrite(b"\x04" * 65536, 65536 * i)
                h.flush()
            except nbd.Error:
                failed += 1
        self.assertEqual(failed, 4, "a fenced daemon acknowledged a write")
        # B's metrics count them as backend errors, apart from client errors.
        scraped = scrape_metrics(b)
        backend_errors = {k: v for k, v in scraped.items()
                          if k.startswith('nbdmgr_backend_errors_total{export="fo"')}
        self.assertGreaterEqual(sum(backend_errors.values()), 4, scraped)
        self.assertTrue(all('error="ESHUTDOWN"' in k or 'error="EIO"' in k
                            for k in backend_errors), backend_errors)
        self.assertEqual(image_bytes("fo", 0, 65536), b"\x03" * 65536)
        self.assertEqual(image_bytes("fo", 65536, 65536 * 3), bytes(65536 * 3))
        out = json.loads(b.nbdctl("get", "fo", "-o", "json").stdout)
        self.assertEqual(out["state"], "STATE_FAILED", out)
        self.assertIn("fenced", out["failure"])


class RbdUnreachableTest(RbdTestBase):
    def test_sigterm_while_ceph_does_not_answer(self):
        # The OSD stops answering (SIGSTOP). Daemon A has writes in flight
        # on its rbd export, daemon B an idle one (closing it must release
        # its lock). Other exports and the API keep serving; SIGTERM still
        # ends both within a bounded time, with exit 1 and a log naming what
        # was left, without hanging or crashing.
        CLUSTER.create_image("stuck-a", 8 * MiB)
        CLUSTER.create_image("stuck-b", 8 * MiB)
        a = self.daemon(["name=mem,backend=memory,size=1MiB"],
                        extra=["--drain-timeout", "2s"])
        b = self.daemon(extra=["--drain-timeout", "2s"])
        self.create(a, "stuck", "stuck-a")
        self.create(b, "idle", "stuck-b")
        run("nbdsh", "-u", b.uri("idle"), "-c", "h.pwrite(b'x' * 4096, 0); h.flush()")
        h = nbd.NBD()
        h.connect_uri(a.uri("stuck"))
        h.pwrite(b"\x05" * 65536, 0)
        CLUSTER.freeze("osd.0")
        self.addCleanup(CLUSTER.thaw, "osd.0")
        cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"\x06" * 65536)),
                                65536 * (i + 1)) for i in range(4)]
        cookies.append(h.aio_flush())
        deadline = time.time() + 1.5
        while time.time() < deadline:
            h.poll(0)
            time.sleep(0.05)
        self.assertFalse(any(h.aio_command_completed(c) for c in cookies),
                         "a write completed while the OSD was stopped")
        # Nothing else waits on Ceph: not another export, not the API.
        run("nbdinfo", a.uri("mem"))
        for _ in range(4):  # new connections land on every io thread
            run("nbdsh", "-u", a.uri("mem"), "-c", "h.pwrite(b'x' * 4096, 0); h.flush()",
                timeout=20)
        out = json.loads(a.nbdctl("get", "stuck", "-o", "json").stdout)
        self.assertEqual(out["name"], "exports/stuck", out)
        start = time.time()
        a.proc.send_signal(signal.SIGTERM)
        b.proc.send_signal(signal.SIGTERM)
        code_a = a.proc.wait(timeout=120)
        took_a = time.time() - start
        code_b = b.proc.wait(timeout=120)
        took_b = time.time() - start
        # A abandons the stuck session after the drain deadline and 15 s,
        # skips that export's flush and exits at once.
        self.assertEqual(code_a, 1, a.logs())
        self.assertLess(took_a, 40, a.logs())
        self.assertIn("abandoning them", a.logs())
        self.assertIn('export "stuck" not flushed', a.logs())
        # B's teardown (releasing the lock) never returns: the shutdown
        # watchdog ends it (drain timeout + 45 s).
        self.assertEqual(code_b, 1, b.logs())
        self.assertLess(took_b, 90, b.logs())
        self.assertIn("shutdown has not finished in time", b.logs())
        for d in (a, b):
            self.assertNotIn("Sanitizer", d.logs())


    def test_restart_with_the_cluster_unreachable(self):
        # Four persisted rbd exports whose cluster no longer answers (the
        # conf now names a monitor nobody listens on): opened in parallel,
        # so the daemon starts serving after about one connect timeout, not
        # four; they are FAILED naming the reason and its memory export
        # serves.
        conf = os.path.join(CLUSTER.dir, "restart-unreachable.conf")
        shutil.copy(CLUSTER.conf, conf)
        names = [f"far{i}" for i in range(4)]
        for n in names:
            CLUSTER.create_image(n, 4 * MiB)
        d = self.daemon(["name=mem,backend=memory,size=1MiB"])
        for n in names:
            d.nbdctl("create", n, "--rbd", f"rbd/{n}", "--ceph-conf", conf,
                     "--ceph-user", CLUSTER.user, "--read-only")
        self.assertEqual(d.stop(), 0, d.logs())
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        with open(conf, "w") as f:
            f.write(f"[global]\nmon host = 127.0.0.1:{dead}\n"
                    "client mount timeout = 5\n")
        start = time.time()
        d.start()
        took = time.time() - start
        # Serially it would be 4 x 5 s.
        self.assertLess(took, 15, d.logs())
        for n in names:
            out = json.loads(d.nbdctl("get", n, "-o", "json").stdout)
            self.assertEqual(out["state"], "STATE_FAILED", out)
        run("nbdinfo", d.uri("mem"))


    def test_restart_while_an_osd_does_not_answer(self):
        # The monitor answers but the OSD does not: opening the image waits
        # for ever. The daemon starts serving after --open-timeout with the
        # export FAILED; once the OSD is back, the open that finished late
        # is closed (its lock released) and a retry serves the image.
        CLUSTER.create_image("late", 4 * MiB)
        CLUSTER.create_image("late2", 4 * MiB)
        d = self.daemon(["name=mem,backend=memory,size=1MiB"],
                        extra=["--open-timeout", "3s"])
        self.create(d, "late", "late")
        run("nbdsh", "-u", d.uri("late"), "-c", "h.pwrite(b'\\x07' * 4096, 0); h.flush()")
        self.assertEqual(d.stop(), 0, d.logs())
        CLUSTER.freeze("osd.0")
        stopped = True
        try:
            d.start()
            out = json.loads(d.nbdctl("get", "late", "-o", "json").stdout)
            self.assertEqual(out["state"], "STATE_FAILED", out)
            self.assertIn("still opening", out["failure"])
            run("nbdinfo", d.uri("mem"))
            # API calls that open an image wait --open-timeout, not for ever.
            for args in (["update", "late", "--retry"],
                         ["create", "late2", "--rbd", "rbd/late2", "--ceph-conf",
                          CLUSTER.conf, "--ceph-user", CLUSTER.user]):
                p = d.nbdctl(*args, check=False)
                self.assertEqual(p.returncode, 3, p.stderr)  # retry later
                self.assertIn("UNAVAILABLE", p.stderr)
                self.assertIn("still opening", p.stderr)
            run("nbdinfo", d.uri("mem"))
            CLUSTER.thaw("osd.0")
            stopped = False
            wait_for(lambda: "opened only after the start stopped waiting" in d.logs()
                     and d.logs().count("opened only after its call stopped waiting") == 2,
                     "the late opens to finish and be closed", timeout=60)
        finally:
            if stopped:
                CLUSTER.thaw("osd.0")
        d.nbdctl("update", "late", "--retry")
        run("nbdsh", "-u", d.uri("late"), "-c",
            "assert h.pread(4096, 0) == b'\\x07' * 4096; h.pwrite(b'\\x08' * 4096, 0); h.flush()")
        self.assertEqual(image_bytes("late", 0, 4096), b"\x08" * 4096)
        self.create(d, "late2", "late2")
        self.assertEqual(d.stop(), 0, d.logs())


if __name__ == "__main__":
    unittest.main()
