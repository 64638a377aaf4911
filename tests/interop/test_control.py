#!/usr/bin/python3
"""Interop: the control plane (gRPC API and nbdctl) against the real daemon."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import nbd

from nbdmgr_fixture import NBDCTL, NBDMGRD, Daemon, grpc_api, random_file, run, sha256

MiB = 1 << 20


def raw_api(control_sock):
    """ExportService calls over raw gRPC."""
    grpc, pb, call = grpc_api(control_sock)
    return grpc, pb.export, lambda method, req, cls: call("ExportService", method, req, cls)


class ControlPlaneTest(unittest.TestCase):
    def setUp(self):
        self.d = Daemon(["name=cli,backend=memory,size=16MiB"])
        self.files = os.path.join(self.d.dir, "files")
        os.makedirs(self.files)
        self.d.args += ["--allow-path", self.files]
        self.d.start()

    def tearDown(self):
        code = self.d.stop()
        logs = self.d.logs()
        self.d.cleanup()
        self.assertEqual(code, 0, logs)

    def ctl_json(self, *args):
        return json.loads(self.d.nbdctl("-o", "json", *args).stdout)

    def test_control_socket_is_private(self):
        mode = stat.S_IMODE(os.stat(self.d.control).st_mode)
        self.assertEqual(mode, 0o600)

    def test_create_serve_persist_restart(self):
        img = os.path.join(self.files, "vm.img")
        self.d.nbdctl("create", "vm", "--file", img, "--size", "32MiB",
                      "--description", "VM disk")
        listed = json.loads(run("nbdinfo", "--list", "--json", self.d.uri("")).stdout)
        names = {e["export-name"]: e for e in listed["exports"]}
        self.assertIn("vm", names)
        self.assertEqual(names["vm"]["description"], "VM disk")
        src = os.path.join(self.d.dir, "src.img")
        random_file(src, 32 * MiB)
        run("nbdcopy", src, self.d.uri("vm"))
        # Restart: the API-created export comes back, with its data.
        self.assertEqual(self.d.stop(), 0)
        self.d.start()
        got = self.ctl_json("get", "vm")
        self.assertTrue(got["persistent"])
        self.assertEqual(got["description"], "VM disk")
        back = os.path.join(self.d.dir, "back.img")
        run("nbdcopy", self.d.uri("vm"), back)
        self.assertEqual(sha256(src), sha256(back))
        # The command-line export is not persisted.
        self.assertFalse(self.ctl_json("get", "cli")["persistent"])

    def test_update_buffer_strategy_during_nbdcopy(self):
        self.d.nbdctl("create", "live", "--memory", "256MiB")
        src = os.path.join(self.d.dir, "src.img")
        random_file(src, 256 * MiB)
        copier = subprocess.Popen(["nbdcopy", "-C", "4", "--requests", "16", src,
                                   self.d.uri("live")], stderr=subprocess.PIPE)
        strategies = ["stream", "exact", "fixed", "grow", "pool"]
        i = 0
        while copier.poll() is None and i < 200:
            self.d.nbdctl("update", "live", "--buffer-strategy", strategies[i % 5],
                          "--memory-cap", ["0", "8MiB", "64MiB"][i % 3])
            i += 1
            time.sleep(0.02)
        _, err = copier.communicate(timeout=120)
        self.assertEqual(copier.returncode, 0, err)
        self.assertGreater(i, 1, "nbdcopy finished before any update")
        back = os.path.join(self.d.dir, "back.img")
        run("nbdcopy", self.d.uri("live"), back)
        self.assertEqual(sha256(src), sha256(back))
        self.assertEqual(self.ctl_json("get", "live")["buffer_strategy"],
                         "BUFFER_STRATEGY_" + strategies[(i - 1) % 5].upper())

    def connect(self, name):
        h = nbd.NBD()
        h.connect_uri(self.d.uri(name))
        return h

    def test_remove_modes(self):
        for name in ("s", "dr", "hd"):
            self.d.nbdctl("create", name, "--memory", "8MiB")
        # SAFE refuses while a client is connected.
        h = self.connect("s")
        p = self.d.nbdctl("remove", "s", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("FAILED_PRECONDITION", p.stderr)
        h.pwrite(b"x" * 512, 0)  # the client was not disturbed
        h.shutdown()
        time.sleep(0.1)
        self.d.nbdctl("remove", "s")
        # DRAIN closes the idle client and refuses new ones.
        h = self.connect("dr")
        out = self.ctl_json("remove", "dr", "--mode", "drain", "--timeout", "5s")
        self.assertEqual(out["closed_clients"], 1)
        with self.assertRaises(nbd.Error):
            h.pread(512, 0)
        with self.assertRaises(nbd.Error):
            self.connect("dr")
        # HARD closes at once.
        h = self.connect("hd")
        h.pwrite(b"y" * 512, 0)
        self.d.nbdctl("remove", "hd", "--mode", "hard")
        with self.assertRaises(nbd.Error):
            h.pread(512, 0)
        listed = json.loads(run("nbdinfo", "--list", "--json", self.d.uri("")).stdout)
        self.assertEqual([e["export-name"] for e in listed["exports"]], ["cli"])

    def test_bad_input_through_nbdctl(self):
        self.d.nbdctl("create", "dup", "--memory", "1MiB")
        cases = [
            (["create", "dup", "--memory", "1MiB"], 1, "ALREADY_EXISTS"),
            (["create", "x" * 200, "--memory", "1MiB"], 1, "INVALID_ARGUMENT"),
            (["create", "a/b", "--memory", "1MiB"], 1, "INVALID_ARGUMENT"),
            (["create", "big", "--memory", "100PiB"], 1, "INVALID_ARGUMENT"),
            (["create", "zero", "--memory", "0"], 1, "INVALID_ARGUMENT"),
            (["create", "out", "--file", "/etc/passwd"], 1, "PERMISSION_DENIED"),
            (["create", "esc", "--file", os.path.join(self.files, "..", "x.img"),
              "--size", "1MiB"], 1, "PERMISSION_DENIED"),
            (["create", "miss", "--file", os.path.join(self.files, "none.img")], 1, "NOT_FOUND"),
            (["get", "nope"], 1, "NOT_FOUND"),
            (["remove", "nope"], 1, "NOT_FOUND"),
            (["create", "neg", "--memory", "-1"], 2, "invalid size"),
            (["create", "s", "--memory", "1MiB", "--buffer-strategy", "magic"], 2,
             "unknown buffer strategy"),
            (["update", "dup"], 2, "nothing to update"),
            (["frobnicate"], 2, "unknown command"),
            (["remove", "dup", "--mode", "gentle"], 2, "--mode"),
        ]
        for args, code, message in cases:
            p = self.d.nbdctl(*args, check=False)
            self.assertEqual(p.returncode, code, (args, p.stderr))
            self.assertIn(message, p.stderr, args)
        # The daemon keeps serving.
        run("nbdinfo", "--size", self.d.uri("cli"))

    def test_bad_input_through_raw_grpc(self):
        grpc, pb, call = raw_api(self.d.control)

        def code_of(method, req, resp):
            try:
                call(method, req, resp)
            except grpc.RpcError as e:
                return e.code()
            return grpc.StatusCode.OK
        INVALID = grpc.StatusCode.INVALID_ARGUMENT
        req = pb.CreateExportRequest(export_id="", export=pb.Export(
            memory=pb.MemoryBackend(size_bytes=MiB)))
        self.assertEqual(code_of("CreateExport", req, pb.Export), INVALID)
        req = pb.CreateExportRequest(export_id="nobackend", export=pb.Export())
        self.assertEqual(code_of("CreateExport", req, pb.Export), INVALID)
        req = pb.CreateExportRequest(export_id="enum", export=pb.Export(
            memory=pb.MemoryBackend(size_bytes=MiB), buffer_strategy=99))
        self.assertEqual(code_of("CreateExport", req, pb.Export), INVALID)
        self.assertEqual(code_of("GetExport", pb.GetExportRequest(name="cli"), pb.Export),
                         INVALID)  # not a resource name
        self.assertEqual(code_of("ListExports", pb.ListExportsRequest(page_size=-5),
                                 pb.ListExportsResponse), INVALID)
        upd = pb.UpdateExportRequest(export=pb.Export(name="exports/cli"))
        self.assertEqual(code_of("UpdateExport", upd, pb.Export), INVALID)  # no mask
        upd.update_mask.paths.append("read_only")
        self.assertEqual(code_of("UpdateExport", upd, pb.Export), INVALID)
        self.assertEqual(code_of("DeleteExport", pb.DeleteExportRequest(
            name="exports/cli", mode=9), pb.DeleteExportResponse), INVALID)
        # Valid requests still work afterwards.
        req = pb.CreateExportRequest(export_id="ok", export=pb.Export(
            memory=pb.MemoryBackend(size_bytes=MiB)))
        created = call("CreateExport", req, pb.Export)
        self.assertEqual(created.name, "exports/ok")
        self.assertEqual(created.size_bytes, MiB)
        page = call("ListExports", pb.ListExportsRequest(page_size=1), pb.ListExportsResponse)
        self.assertEqual(len(page.exports), 1)
        self.assertEqual(page.next_page_token, "cli")

    def test_health_and_reflection(self):
        import grpc
        channel = grpc.insecure_channel(f"unix:{self.d.control}")
        raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
        # grpc.health.v1.Health/Check with service "": HealthCheckResponse
        # {status: SERVING} is the bytes 08 01.
        check = channel.unary_unary("/grpc.health.v1.Health/Check", **raw)
        self.assertEqual(check(b"", timeout=10), b"\x08\x01")
        # Server reflection: list_services (field 7) names our services.
        info = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", **raw)
        replies = b"".join(info(iter([b"\x3a\x00"]), timeout=10))
        self.assertIn(b"nbdmgr.v1.ExportService", replies)
        self.assertIn(b"nbdmgr.v1.DaemonService", replies)

    def test_daemon_memory_cap(self):
        out = self.ctl_json("daemon", "--memory-cap", "256MiB")
        self.assertEqual(int(out["memory_cap_bytes"]), 256 * MiB)
        out = self.ctl_json("daemon")
        self.assertEqual(int(out["exports"]), 1)
        self.assertIn(f"unix:{self.d.sock}", out["nbd_listen"])


class TcpControlTest(unittest.TestCase):
    def test_tcp_control_needs_tls_and_works_with_it(self):
        d = Daemon(["name=m,backend=memory,size=1MiB"])
        try:
            # TCP without TLS is refused unless --control-insecure.
            args = [a if a != f"unix:{d.control}" else "tcp:127.0.0.1:0" for a in d.args]
            p = subprocess.run(args, capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2)
            self.assertIn("--control-tls-cert", p.stderr)
            cert = os.path.join(d.dir, "cert.pem")
            key = os.path.join(d.dir, "key.pem")
            run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", key, "-out", cert)
            d.args = args + ["--control-tls-cert", cert, "--control-tls-key", key]
            d.start()
            with open(d.ready) as f:
                control = [l[len("control="):] for l in f.read().split()
                           if l.startswith("control=")][0]
            ok = run(NBDCTL, "--control", control,
                     "--tls-ca", cert, "-o", "json", "get", "m")
            self.assertIn('"exports/m"', ok.stdout)
            plain = run(NBDCTL, "--control", control,
                        "--insecure", "get", "m", check=False)
            self.assertNotEqual(plain.returncode, 0)
            self.assertEqual(d.stop(), 0)
        finally:
            d.cleanup()


class StateFileTest(unittest.TestCase):
    def test_corrupt_state_file_refuses_start_and_is_kept(self):
        d = Daemon(["name=m,backend=memory,size=1MiB"])
        try:
            os.makedirs(d.state_dir)
            path = os.path.join(d.state_dir, "exports.textproto")
            with open(path, "w") as f:
                f.write("exports { name: ")
            p = subprocess.run(d.args, capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 1)
            self.assertIn(path, p.stderr)
            with open(path) as f:
                self.assertEqual(f.read(), "exports { name: ")
        finally:
            d.cleanup()

    def test_state_and_config_of_version_0_1_load(self):
        """Files of nbdmgrd 0.1 (old enum names: POOL, TLS_REQUIRE) serve,
        and nbdctl prints the new names in JSON, the short ones in tables."""
        here = os.path.dirname(os.path.abspath(__file__))
        psk = tempfile.NamedTemporaryFile("w", suffix=".psk", delete=False)
        self.addCleanup(os.unlink, psk.name)
        psk.write("fixture:" + os.urandom(16).hex() + "\n")
        psk.close()
        d = Daemon([], extra=["--tls-psk", psk.name])
        try:
            os.makedirs(d.state_dir, mode=0o700)
            fixture = os.path.join(here, "..", "state", "fixtures", "v0.1-state")
            for name in ("exports.textproto", "exports.log"):
                shutil.copyfile(os.path.join(fixture, name),
                                os.path.join(d.state_dir, name))
            d.start()
            got = {e["name"]: e for e in json.loads(
                d.nbdctl("-o", "json", "list").stdout)["exports"]}
            want = {
                "exports/fixed-off": ("BUFFER_STRATEGY_FIXED", "TLS_MODE_OFF", "STATE_ACTIVE"),
                "exports/grow-optional": ("BUFFER_STRATEGY_GROW", "TLS_MODE_OPTIONAL", "STATE_ACTIVE"),
                "exports/exact-require": ("BUFFER_STRATEGY_EXACT", "TLS_MODE_REQUIRE", "STATE_ACTIVE"),
                "exports/pool-default": ("BUFFER_STRATEGY_POOL", "TLS_MODE_OFF", "STATE_ACTIVE"),
                "exports/stream-file": ("BUFFER_STRATEGY_STREAM", "TLS_MODE_OFF", "STATE_FAILED"),
            }
            self.assertEqual({n: (e["buffer_strategy"], e["tls"], e["state"])
                              for n, e in got.items()}, want)
            self.assertEqual(got["exports/fixed-off"]["memory_cap_bytes"], str(8 * MiB))
            self.assertEqual(got["exports/exact-require"]["memory_cap_bytes"], str(16 * MiB))
            table = d.nbdctl("list").stdout
            self.assertRegex(table, r"fixed-off .* fixed .* active,ro")
            self.assertRegex(table, r"stream-file .* stream .* FAILED")
            run("nbdinfo", d.uri("pool-default"))
            self.assertEqual(d.stop(), 0, d.logs())
        finally:
            d.cleanup()
        conf = os.path.join(here, "..", "daemon", "fixtures", "old-names.conf")
        p = subprocess.run([NBDMGRD, "--config", conf, "--check-config",
                            "--tls-psk", psk.name],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("export: exact (memory 4MiB, tls=require)", p.stdout)


if __name__ == "__main__":
    unittest.main()
