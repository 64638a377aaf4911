#!/usr/bin/env python3
"""The control plane, persisted exports and file confinement under operator
mistakes, races with an attacker who can create files, and a full disk.

Each test drives a real nbdmgrd with nbdctl, raw gRPC and libnbd tools, and
asserts what an operator or a client sees.
"""
import json
import os
import stat
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from nbdmgr_fixture import Daemon, grpc_api, random_file, run, sha256

MiB = 1 << 20


class IntegrityTest(unittest.TestCase):
    def setUp(self):
        self.d = Daemon(["name=cli,backend=memory,size=1MiB"])
        self.files = os.path.join(self.d.dir, "files")
        os.makedirs(self.files)
        self.outside = os.path.join(self.d.dir, "outside")
        os.makedirs(self.outside)
        self.d.args += ["--allow-path", self.files]

    def tearDown(self):
        code = self.d.stop()
        logs = self.d.logs()
        self.d.cleanup()
        self.assertIn(code, (0, None), logs)

    def ctl_json(self, *args):
        return json.loads(self.d.nbdctl("-o", "json", *args).stdout)

    def api(self):
        grpc, pb, call = grpc_api(self.d.control)
        return grpc, pb.export, lambda m, req, cls: call("ExportService", m, req, cls)

    def code_of(self, fn):
        import grpc
        try:
            fn()
        except grpc.RpcError as e:
            return e.code().name, e.details()
        return "OK", ""

    def restart(self):
        self.assertEqual(self.d.stop(), 0, self.d.logs())
        self.d.start()

    def export_info(self, name):
        for line in self.metrics().splitlines():
            if line.startswith("nbdmgr_export_info{") and f'export="{name}"' in line:
                return line
        return None

    def metrics(self):
        with urllib.request.urlopen(f"http://{self.d.metrics}/metrics", timeout=10) as r:
            return r.read().decode()

    def small_state_dir(self, size):
        """Points the daemon's --state-dir at a tmpfs of `size` (skips the
        test where mounting is not allowed)."""
        if os.geteuid() != 0:
            self.skipTest("mounting a tmpfs needs root")
        state = os.path.join(self.d.dir, "small")
        os.makedirs(state)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                            "tmpfs", state], capture_output=True, text=True)
        if p.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs here: {p.stderr.strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", state])
        self.d.args[self.d.args.index(self.d.state_dir)] = state
        return state

    # 1. Opening a backend never blocks the control plane.
    def test_fifo_is_refused_and_the_api_keeps_answering(self):
        self.d.start()
        fifo = os.path.join(self.files, "pipe")
        os.mkfifo(fifo)
        for extra in (["--read-only"], []):
            p = self.d.nbdctl("create", "pipe", "--file", fifo, *extra, check=False)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("not a regular file or block device", p.stderr)
        # A character device and a directory are refused the same way.
        if os.geteuid() == 0:
            zero = os.path.join(self.files, "zero")
            os.mknod(zero, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
            p = self.d.nbdctl("create", "zero", "--file", zero, check=False)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("not a regular file or block device", p.stderr)
        os.makedirs(os.path.join(self.files, "sub"))
        p = self.d.nbdctl("create", "dir", "--file", os.path.join(self.files, "sub"),
                          "--read-only", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("not a regular file or block device", p.stderr)
        self.assertIn("cli", self.d.nbdctl("list").stdout)
        self.assertEqual(self.d.nbdctl("health").returncode, 0)
        # SIGTERM still stops it at once (nothing is stuck in open()).
        self.assertEqual(self.d.stop(), 0, self.d.logs())

    # 4. One validation: what an update accepts, a restart loads.
    def test_update_out_of_range_is_refused_and_restart_loads_the_rest(self):
        self.d.start()
        self.d.nbdctl("create", "vm1", "--memory", "1MiB")
        p = self.d.nbdctl("update", "vm1", "--pool-idle-release", "9000h", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("pool idle release", p.stderr)
        grpc, pb, call = self.api()
        # A duration that would overflow milliseconds.
        upd = pb.UpdateExportRequest(export=pb.Export(name="exports/vm1"))
        upd.export.pool_idle_release.seconds = 18446744073709552 % (1 << 63)
        upd.update_mask.paths.append("pool_idle_release")
        code, _ = self.code_of(lambda: call("UpdateExport", upd, pb.Export))
        self.assertEqual(code, "INVALID_ARGUMENT")
        # A null export larger than NBD can describe.
        req = pb.CreateExportRequest(export_id="huge", export=pb.Export(
            null=pb.NullBackend(size_bytes=(1 << 63) + 512)))
        code, details = self.code_of(lambda: call("CreateExport", req, pb.Export))
        self.assertEqual(code, "INVALID_ARGUMENT", details)
        # The largest one works and is what nbdinfo sees.
        req = pb.CreateExportRequest(export_id="big", export=pb.Export(
            null=pb.NullBackend(size_bytes=(1 << 63) - 1)))
        call("CreateExport", req, pb.Export)
        self.assertEqual(run("nbdinfo", "--size", self.d.uri("big")).stdout.strip(),
                         str((1 << 63) - 1))
        self.d.nbdctl("update", "vm1", "--pool-idle-release", "8000h")
        self.restart()
        got = self.ctl_json("get", "vm1")
        self.assertEqual(got["pool_idle_release"], f"{8000 * 3600}s")

    # 2. Confinement at every open.
    def test_symlink_swapped_in_before_restart_is_not_served(self):
        secret = os.path.join(self.outside, "secret.img")
        random_file(secret, MiB)
        before = sha256(secret)
        image = os.path.join(self.files, "vm1.img")
        self.d.start()
        self.d.nbdctl("create", "vm1", "--file", image, "--size", "1MiB")
        self.d.nbdctl("create", "vm2", "--file", os.path.join(self.files, "vm2.img"),
                      "--size", "1MiB")
        self.assertEqual(self.d.stop(), 0)
        os.rename(image, image + ".real")
        os.symlink(secret, image)
        self.d.start()
        got = self.ctl_json("get", "vm1")
        self.assertEqual(got["state"], "STATE_FAILED")
        self.assertIn("symbolic link", got["failure"])
        self.assertIn("FAILED", self.d.nbdctl("list").stdout)
        self.assertIn('status="failed"', self.export_info("vm1"))
        self.assertIn("vm1              FAILED, not served: path",
                      self.d.nbdctl("stats").stdout)
        self.assertIn("vm1", self.d.logs())
        p = run("nbdinfo", "--size", self.d.uri("vm1"), check=False)
        self.assertNotEqual(p.returncode, 0)
        # The other exports serve.
        self.assertEqual(run("nbdinfo", "--size", self.d.uri("vm2")).stdout.strip(),
                         str(MiB))
        # A retry while the link is there fails again and changes nothing.
        p = self.d.nbdctl("update", "vm1", "--retry", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("still FAILED", p.stderr)
        self.assertEqual(sha256(secret), before)
        # Put the real image back: a retry serves it.
        os.unlink(image)
        os.rename(image + ".real", image)
        self.d.nbdctl("update", "vm1", "--retry")
        self.assertEqual(self.ctl_json("get", "vm1")["state"], "STATE_ACTIVE")
        run("nbdsh", "-u", self.d.uri("vm1"), "-c", "h.pwrite(b'x' * 512, 0)")
        self.assertEqual(sha256(secret), before)
        # An allowed directory dropped from --allow-path: FAILED at start.
        self.assertEqual(self.d.stop(), 0)
        self.d.args[self.d.args.index(self.files)] = self.outside
        self.d.start()
        got = self.ctl_json("get", "vm2")
        self.assertEqual(got["state"], "STATE_FAILED")
        self.assertIn("outside the allowed directories", got["failure"])
        self.assertEqual(run("nbdinfo", "--size", self.d.uri("cli")).stdout.strip(),
                         str(MiB))

    def test_path_race_during_create_never_serves_the_outside_file(self):
        inside = os.path.join(self.files, "inside.img")
        with open(inside, "wb") as f:
            f.truncate(MiB)
        outside = os.path.join(self.outside, "outside.img")
        with open(outside, "wb") as f:
            f.truncate(2 * MiB)  # the size tells which file was opened
        link = os.path.join(self.files, "link.tmp")
        plain = os.path.join(self.files, "plain.tmp")
        racy = os.path.join(self.files, "racy.img")
        self.d.start()
        grpc, pb, call = self.api()
        stop = threading.Event()

        def flip():
            while not stop.is_set():
                try:
                    os.symlink(outside, link)
                    os.rename(link, racy)
                    os.link(inside, plain)
                    os.rename(plain, racy)
                except OSError:
                    pass

        t = threading.Thread(target=flip)
        t.start()
        outcomes = {}
        try:
            for i in range(300):
                req = pb.CreateExportRequest(export_id=f"r{i}", export=pb.Export(
                    file=pb.FileBackend(path=racy)))
                try:
                    e = call("CreateExport", req, pb.Export)
                    self.assertEqual(e.size_bytes, MiB, "the outside file was opened")
                    outcomes["served inside"] = outcomes.get("served inside", 0) + 1
                    call("DeleteExport", pb.DeleteExportRequest(name=e.name),
                         pb.DeleteExportResponse)
                except grpc.RpcError as err:
                    self.assertIn(err.code().name, ("PERMISSION_DENIED", "NOT_FOUND"),
                                  err.details())
                    outcomes[err.code().name] = outcomes.get(err.code().name, 0) + 1
        finally:
            stop.set()
            t.join()
        print("race outcomes:", outcomes)
        self.assertGreater(outcomes.get("PERMISSION_DENIED", 0), 0)

    # 3. One export's trouble is that export's.
    def test_missing_images_at_start_leave_those_exports_failed(self):
        self.d.start()
        img1 = os.path.join(self.files, "created.img")
        img2 = os.path.join(self.files, "given.img")
        random_file(img2, MiB)
        self.d.nbdctl("create", "created", "--file", img1, "--size", "1MiB")
        self.d.nbdctl("create", "given", "--file", img2)
        run("nbdsh", "-u", self.d.uri("created"), "-c", "h.pwrite(b'data' * 128, 0)")
        self.d.nbdctl("create", "healthy", "--memory", "1MiB")
        self.assertEqual(self.d.stop(), 0)
        # The filesystem of the images is "not mounted yet".
        hidden = os.path.join(self.d.dir, "unmounted")
        os.rename(self.files, hidden)
        os.makedirs(self.files)
        self.d.start()
        for name in ("created", "given"):
            got = self.ctl_json("get", name)
            self.assertEqual(got["state"], "STATE_FAILED", got)
            self.assertIn("no such file", got["failure"])
        # Never recreated blank.
        self.assertFalse(os.path.exists(img1))
        self.assertEqual(run("nbdinfo", "--size", self.d.uri("healthy")).stdout.strip(),
                         str(MiB))
        # A FAILED export can still be updated (saved), and is kept at restart.
        self.d.nbdctl("update", "given", "--description", "waiting for its disk")
        self.restart()
        got = self.ctl_json("get", "given")
        self.assertEqual((got["state"], got["description"]),
                         ("STATE_FAILED", "waiting for its disk"))
        # The disk is back: retry serves the data that was there.
        os.rmdir(self.files)
        os.rename(hidden, self.files)
        self.d.nbdctl("update", "created", "--retry")
        self.d.nbdctl("update", "given", "--retry")
        p = run("nbdsh", "-u", self.d.uri("created"), "-c",
                "print(h.pread(512, 0) == b'data' * 128)")
        self.assertEqual(p.stdout.strip(), "True")
        back = os.path.join(self.d.dir, "back.img")
        run("nbdcopy", self.d.uri("given"), back)
        self.assertEqual(sha256(back), sha256(img2))
        # Removing a FAILED export works at once.
        self.assertEqual(self.d.stop(), 0)
        os.unlink(img2)
        self.d.start()
        self.d.nbdctl("remove", "given")
        p = self.d.nbdctl("get", "given", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.restart()
        self.assertNotIn("given", self.d.nbdctl("list").stdout)

    def test_invalid_utf8_is_invalid_argument(self):
        import grpc
        self.d.start()
        channel = grpc.insecure_channel(f"unix:{self.d.control}")
        self.addCleanup(channel.close)
        # CreateExportRequest{export_id: "\\xff\\xfe"} written by hand: no
        # protobuf library lets a client send a string that is not UTF-8.
        raw = b"\x0a\x02\xff\xfe"
        stub = channel.unary_unary("/nbdmgr.v1.ExportService/CreateExport",
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        with self.assertRaises(grpc.RpcError) as cm:
            stub(raw, timeout=30)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT,
                         cm.exception.details())
        self.assertIn("cannot be parsed", cm.exception.details())
        get = channel.unary_unary("/nbdmgr.v1.ExportService/GetExport",
                                  request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
        with self.assertRaises(grpc.RpcError) as cm:
            get(b"\x0a\x03\xc0\xafx", timeout=30)  # overlong "/"
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        # The daemon keeps serving, and a real error is still what it is.
        self.assertIn("cli", self.d.nbdctl("list").stdout)
        p = self.d.nbdctl("get", "nope", check=False)
        self.assertIn("NOT_FOUND", p.stderr)

    def test_max_exports(self):
        self.d.args += ["--max-exports", "3"]
        self.d.start()
        self.d.nbdctl("create", "a", "--memory", "1MiB")
        self.d.nbdctl("create", "b", "--memory", "1MiB")
        p = self.d.nbdctl("create", "c", "--memory", "1MiB", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--max-exports", p.stderr)
        self.d.nbdctl("remove", "a")
        self.d.nbdctl("create", "c", "--memory", "1MiB")

    # 5. The API, the live set and the state file agree on a full disk.
    def test_full_state_filesystem(self):
        state = self.small_state_dir("2m")
        self.d.start()
        self.d.nbdctl("create", "vm1", "--memory", "1MiB", "--description", "v0")
        self.d.nbdctl("create", "vm2", "--memory", "1MiB")
        filler = os.path.join(state, "filler")
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"],
                       capture_output=True)
        grpc, pb, call = self.api()

        def update(desc):
            upd = pb.UpdateExportRequest(export=pb.Export(
                name="exports/vm1", description=desc))
            upd.update_mask.paths.append("description")
            return call("UpdateExport", upd, pb.Export)

        # Updates go into the preallocated log until it is full; then a new
        # snapshot is needed and the disk has no room for it.
        last_ok, failure = "v0", None
        for i in range(1, 2000):
            desc = f"v{i}-" + "x" * 4000
            try:
                update(desc)
                last_ok = desc
            except grpc.RpcError as e:
                failure = e
                break
        self.assertIsNotNone(failure, "the state never filled up")
        self.assertEqual(failure.code().name, "RESOURCE_EXHAUSTED", failure.details())
        self.assertEqual(self.ctl_json("get", "vm1")["description"], last_ok)
        # A create that cannot be saved does not exist; a delete that cannot be
        # saved leaves the export served.
        p = self.d.nbdctl("create", "vm3", "--memory", "1MiB", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertNotEqual(self.d.nbdctl("get", "vm3", check=False).returncode, 0)
        p = self.d.nbdctl("remove", "vm2", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(self.ctl_json("get", "vm2")["state"], "STATE_ACTIVE")
        run("nbdinfo", "--size", self.d.uri("vm2"))
        # What the API answered is what comes back after a restart.
        self.restart()
        self.assertEqual(self.ctl_json("get", "vm1")["description"], last_ok)
        self.assertNotEqual(self.d.nbdctl("get", "vm3", check=False).returncode, 0)
        self.assertEqual(self.ctl_json("get", "vm2")["state"], "STATE_ACTIVE")
        # Room again: changes work and persist.
        os.unlink(filler)
        self.d.nbdctl("update", "vm1", "--description", "after")
        self.d.nbdctl("remove", "vm2")
        self.restart()
        self.assertEqual(self.ctl_json("get", "vm1")["description"], "after")
        self.assertNotEqual(self.d.nbdctl("get", "vm2", check=False).returncode, 0)

    def test_created_file_is_removed_when_the_create_cannot_be_saved(self):
        state = self.small_state_dir("1200k")
        self.d.start()
        # The first create needs a snapshot and a 1 MiB log: no room.
        subprocess.run(["dd", "if=/dev/zero", f"of={state}/filler", "bs=64k"],
                       capture_output=True)
        img = os.path.join(self.files, "new.img")
        p = self.d.nbdctl("create", "new", "--file", img, "--size", "1MiB", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("saving state", p.stderr)
        self.assertFalse(os.path.exists(img))
        self.assertNotEqual(self.d.nbdctl("get", "new", check=False).returncode, 0)


if __name__ == "__main__":
    unittest.main()
