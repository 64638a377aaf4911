"""Starts a real nbdmgrd on loopback and a Unix socket for interop tests.

Runs with Debian's /usr/bin/python3 (for the `nbd` module of python3-libnbd).
"""
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import urllib.request

NBDMGRD = os.environ.get("NBDMGRD") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "daemon", "nbdmgrd")
NBDCTL = os.environ.get("NBDCTL") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "cli", "nbdctl")


PROTO_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "proto")


def grpc_api(control_sock):
    """Raw gRPC to the daemon with message classes made by protoc --python_out.

    Returns (grpc module, namespace of export/daemon/stats/qos _pb2 modules,
    call(service, method, request, response_cls)).
    """
    import importlib
    import sys
    import types
    import grpc  # python3-grpcio
    out = tempfile.mkdtemp(prefix="nbdmgr-pb-")
    run("protoc", f"-I{PROTO_DIR}", f"--python_out={out}", "nbdmgr/v1/export.proto",
        "nbdmgr/v1/daemon.proto", "nbdmgr/v1/stats.proto", "nbdmgr/v1/qos.proto")
    sys.path.insert(0, out)
    pb = types.SimpleNamespace(
        **{m: importlib.import_module(f"nbdmgr.v1.{m}_pb2")
           for m in ("export", "daemon", "stats", "qos")})
    channel = grpc.insecure_channel(f"unix:{control_sock}")

    def call(service, method, request, response_cls):
        stub = channel.unary_unary(
            f"/nbdmgr.v1.{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString)
        return stub(request, timeout=30)
    return grpc, pb, call


def run(*cmd, check=True, timeout=120, **kw):
    """Runs a client tool; on failure the assertion shows its output."""
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def scrape_metrics(d):
    """Parses daemon `d`'s /metrics into {"name{labels}": value}."""
    with urllib.request.urlopen(f"http://{d.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def small_tmpfs(test, size="4m"):
    """Mounts a tmpfs of `size` for `test` (unmounted at its cleanup) and
    returns its path: a file system that fills up. Skips the test where a
    tmpfs cannot be mounted (not root)."""
    mnt = tempfile.mkdtemp(prefix="nbdmgr-full-")
    test.addCleanup(os.rmdir, mnt)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt],
                       capture_output=True, text=True)
    if p.returncode != 0:
        test.skipTest(f"cannot mount a tmpfs here (needs root): {p.stderr.strip()}")
    test.addCleanup(subprocess.run, ["umount", "-l", mnt])
    return mnt


def wait_for(cond, what, timeout=60, interval=0.1):
    """Polls `cond` until it is true; fails naming `what` after `timeout` s."""
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def random_file(path, size):
    with open(path, "wb") as f:
        f.write(os.urandom(size))


class Daemon:
    """One nbdmgrd process with the given --export specs."""

    def __init__(self, exports, extra=(), workdir=None, env=None):
        self.env = env  # extra environment variables for the daemon
        self.dir = workdir or tempfile.mkdtemp(prefix="nbdmgr-test-")
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.ready = os.path.join(self.dir, "ready")
        self.log_path = os.path.join(self.dir, "nbdmgrd.log")
        self.control = os.path.join(self.dir, "control.sock")
        self.state_dir = os.path.join(self.dir, "state")
        self.args = [NBDMGRD, "--nbd-listen", "tcp:127.0.0.1:0",
                     "--nbd-listen", f"unix:{self.sock}",
                     "--control-listen", f"unix:{self.control}",
                     "--state-dir", self.state_dir,
                     "--metrics-listen", "127.0.0.1:0",
                     "--ready-file", self.ready, "--drain-timeout", "5s"]
        for e in exports:
            self.args += ["--export", e]
        self.args += list(extra)
        self.proc = None
        self.port = None
        self.metrics = None  # "127.0.0.1:PORT" of /metrics

    def start(self):
        if os.path.exists(self.ready):
            os.unlink(self.ready)
        self.log = open(self.log_path, "ab")
        env = dict(os.environ, **self.env) if self.env else None
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log, env=env)
        deadline = time.time() + 15
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None:
                raise AssertionError(f"nbdmgrd exited {self.proc.returncode}:\n{self.logs()}")
            if time.time() > deadline:
                raise AssertionError("nbdmgrd did not become ready:\n" + self.logs())
            time.sleep(0.02)
        with open(self.ready) as f:
            lines = f.read().split()
        for line in lines:
            if line.startswith("tcp:"):  # the NBD port (others are "name=ADDR")
                self.port = int(line.rsplit(":", 1)[1])
            elif line.startswith("metrics="):
                self.metrics = line.split("=", 1)[1]
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stops the daemon; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    def logs(self):
        try:
            return open(self.log_path, errors="replace").read()
        except OSError:
            return ""

    def uri(self, name="", transport="unix"):
        if transport == "unix":
            return f"nbd+unix:///{name}?socket={self.sock}"
        return f"nbd://127.0.0.1:{self.port}/{name}"

    def nbdctl(self, *args, check=True):
        """Runs nbdctl against this daemon's control socket."""
        return run(NBDCTL, "--control", f"unix:{self.control}", *args, check=check)

    def cleanup(self):
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def finish(self):
        """Stops the daemon (SIGTERM), removes its directory, and fails with
        its log unless it exited 0: a class fixture's tearDownClass."""
        code = self.stop()
        logs = self.logs()
        self.cleanup()
        assert code == 0, f"nbdmgrd exited {code}:\n{logs}"


class NbdctlChecks:
    """nbdctl run against the daemon `self.d` and checked, for a
    unittest.TestCase: exit 0 and silence on stderr, exit 1 with the gRPC
    code the daemon answered, or exit 2 with a usage message."""

    def ctl(self, *args):
        """nbdctl that must succeed."""
        p = self.d.nbdctl(*args, check=False)
        self.assertEqual(p.returncode, 0, (args, p.stderr))
        self.assertEqual(p.stderr, "", args)
        return p

    def ctl_json(self, *args):
        return json.loads(self.ctl("-o", "json", *args).stdout)

    def fails(self, code, *args):
        """nbdctl that the daemon refuses with gRPC status `code` (exit 1);
        returns stderr."""
        p = self.d.nbdctl(*args, check=False)
        self.assertEqual(p.returncode, 1, (args, p.stdout, p.stderr))
        self.assertTrue(p.stderr.startswith(f"nbdctl: {code}: "), (args, p.stderr))
        self.assertEqual(p.stdout, "", args)
        return p.stderr

    def usage_error(self, *args):
        """nbdctl that must exit 2 with a message; returns its first line."""
        p = self.d.nbdctl(*args, check=False)
        self.assertEqual(p.returncode, 2, (args, p.stderr))
        self.assertEqual(p.stdout, "", args)
        self.assertTrue(p.stderr.startswith("nbdctl: "), (args, p.stderr))
        return p.stderr.splitlines()[0]

    def assert_served_like_the_others(self, service, method, unparsable):
        """nbdmgr.v1.`service` is SERVING to health checks and listed by
        server reflection, and `method` answers a request that does not
        parse (the bytes `unparsable`) with INVALID_ARGUMENT, not INTERNAL."""
        import grpc
        full = f"nbdmgr.v1.{service}"
        self.assertEqual(self.ctl("health", full).stdout, "SERVING\n")
        channel = grpc.insecure_channel(f"unix:{self.d.control}")
        self.addCleanup(channel.close)
        raw = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
        # Server reflection lists it (list_services, field 7).
        info = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", **raw)
        self.assertIn(full.encode(), b"".join(info(iter([b"\x3a\x00"]), timeout=10)))
        call = channel.unary_unary(f"/{full}/{method}", **raw)
        with self.assertRaises(grpc.RpcError) as cm:
            call(unparsable, timeout=30)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT,
                         cm.exception.details())
        self.assertIn("cannot be parsed", cm.exception.details())


class RawClient:
    """Speaks NBD by hand, for requests no real client will send."""

    def __init__(self, daemon, name, structured=False):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(daemon.sock)
        greeting = self.recv(18)
        assert greeting[:8] == b"NBDMAGIC", greeting
        self.s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
        if structured:
            self.option(8, b"")
            assert self.option_reply()[1] == 1
        data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
        self.option(7, data)
        while True:
            _, rtype, payload = self.option_reply()
            if rtype == 1:
                break
            assert rtype == 3, hex(rtype)
            if struct.unpack(">H", payload[:2])[0] == 0:
                self.size = struct.unpack(">Q", payload[2:10])[0]

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError("server closed the connection")
            buf += chunk
        return buf

    def option(self, opt, data):
        self.s.sendall(struct.pack(">QII", 0x49484156454F5054, opt, len(data)) + data)

    def option_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv(20))
        assert magic == 0x0003E889045565A9
        return opt, rtype, self.recv(length)

    def request(self, cmd, offset, length, flags=0, cookie=1, payload=b""):
        self.s.sendall(struct.pack(">IHHQQI", 0x25609513, flags, cmd, cookie,
                                   offset, length) + payload)

    def simple_reply(self):
        magic, error, cookie = struct.unpack(">IIQ", self.recv(16))
        assert magic == 0x67446698, hex(magic)
        return error, cookie

    def close(self):
        self.s.close()
