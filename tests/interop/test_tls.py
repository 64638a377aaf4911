#!/usr/bin/python3
"""Interop: NBD over TLS (STARTTLS) with real clients: nbdinfo/nbdcopy with
X.509 certificates and PSK, qemu-img with tls-creds-x509, client
certificates, and clients refused without TLS."""
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import urllib.request

import nbd

from nbdmgr_fixture import Daemon, random_file, run, sha256

MiB = 1 << 20
ERR_TLS_REQD = (1 << 31) + 5
ERR_UNKNOWN = (1 << 31) + 6
OPT_MAGIC = 0x49484156454F5054


def certtool(*args):
    run("certtool", *args)


def make_pki(d):
    """A CA, a server certificate for localhost/127.0.0.1 and a client
    certificate, laid out as libnbd and qemu expect (ca-cert.pem,
    client-cert.pem, client-key.pem); and a psktool key file."""
    def template(name, text):
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(text)
        return path
    ca_key, ca_cert = os.path.join(d, "ca-key.pem"), os.path.join(d, "ca-cert.pem")
    certtool("--generate-privkey", "--outfile", ca_key)
    certtool("--generate-self-signed", "--load-privkey", ca_key, "--template",
             template("ca.info", "cn = nbdmgr test CA\nca\ncert_signing_key\n"
                                 "expiration_days = 2\n"), "--outfile", ca_cert)
    for role, info in (
            ("server", "organization = nbdmgr\ncn = localhost\ndns_name = localhost\n"
                       "ip_address = 127.0.0.1\ntls_www_server\nencryption_key\n"
                       "signing_key\nexpiration_days = 2\n"),
            ("client", "organization = nbdmgr\ncn = client\ntls_www_client\n"
                       "encryption_key\nsigning_key\nexpiration_days = 2\n")):
        key = os.path.join(d, f"{role}-key.pem")
        certtool("--generate-privkey", "--outfile", key)
        certtool("--generate-certificate", "--load-privkey", key,
                 "--load-ca-certificate", ca_cert, "--load-ca-privkey", ca_key,
                 "--template", template(f"{role}.info", info),
                 "--outfile", os.path.join(d, f"{role}-cert.pem"))
    # A client directory with only the CA (no client certificate).
    os.makedirs(os.path.join(d, "anon"))
    shutil.copy(ca_cert, os.path.join(d, "anon"))
    run("psktool", "-u", "alice", "-p", os.path.join(d, "keys.psk"))
    run("psktool", "-u", "alice", "-p", os.path.join(d, "wrong.psk"))


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pki = tempfile.mkdtemp(prefix="nbdmgr-pki-")
        make_pki(cls.pki)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.pki, ignore_errors=True)

    def daemon(self, exports, *extra):
        d = Daemon(exports, extra=list(extra)).start()
        self.addCleanup(d.stop)
        return d

    def x509_daemon(self, *extra):
        p = self.pki
        return self.daemon(["name=secure,backend=memory,size=16MiB,tls=require",
                            "name=open,backend=memory,size=1MiB"],
                           "--tls-cert", f"{p}/server-cert.pem",
                           "--tls-key", f"{p}/server-key.pem", *extra)

    def tls_uri(self, d, name, certs=None):
        return (f"nbds://127.0.0.1:{d.port}/{name}"
                f"?tls-certificates={certs or self.pki}")

    def test_nbdinfo_and_nbdcopy_over_x509(self):
        d = self.x509_daemon()
        info = json.loads(run("nbdinfo", "--json", self.tls_uri(d, "secure")).stdout)
        self.assertEqual(info["exports"][0]["export-size"], 16 * MiB)
        src = os.path.join(d.dir, "src.img")
        back = os.path.join(d.dir, "back.img")
        random_file(src, 16 * MiB)
        run("nbdcopy", src, self.tls_uri(d, "secure"))
        run("nbdcopy", self.tls_uri(d, "secure"), back)
        self.assertEqual(sha256(src), sha256(back))
        # Over a Unix socket too.
        uri = (f"nbds+unix:///secure?socket={d.sock}&tls-certificates={self.pki}"
               f"&tls-hostname=localhost")
        run("nbdcopy", uri, back)
        self.assertEqual(sha256(src), sha256(back))

    def test_clear_client_is_refused_on_require_export(self):
        d = self.x509_daemon()
        p = run("nbdinfo", f"nbd://127.0.0.1:{d.port}/secure", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("secure", p.stderr)  # libnbd reports ERR_TLS_REQD as ENOTSUP
        # Raw: GO gets ERR_TLS_REQD; LIST hides the export; the clear one works.
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.recv(18)
        s.sendall(struct.pack(">I", 3))

        def option(opt, data=b""):
            s.sendall(struct.pack(">QII", OPT_MAGIC, opt, len(data)) + data)
            replies = []
            while True:
                _, _, rtype, n = struct.unpack(">QIII", recv(s, 20))
                payload = recv(s, n)
                replies.append((rtype, payload))
                if rtype == 1 or rtype & (1 << 31):
                    return replies
        go = option(7, struct.pack(">I", 6) + b"secure" + b"\0\0")
        self.assertEqual(go[-1][0], ERR_TLS_REQD)
        names = [r[1][4:4 + struct.unpack(">I", r[1][:4])[0]].decode()
                 for r in option(3) if r[0] == 2]
        self.assertEqual(names, ["open"])
        s.close()
        info = json.loads(run("nbdinfo", "--json", f"nbd://127.0.0.1:{d.port}/open").stdout)
        self.assertEqual(info["exports"][0]["export-size"], 1 * MiB)
        # Counted as a refusal and a handshake failure.
        metrics = urllib.request.urlopen(f"http://{d.metrics}/metrics").read().decode()
        self.assertRegex(metrics, r'nbdmgr_limit_refusals_total\{reason="tls_required"\} [1-9]')

    def test_forced_tls_when_every_export_requires_it(self):
        p = self.pki
        d = self.daemon(["name=secure,backend=memory,size=1MiB,tls=require"],
                        "--tls-cert", f"{p}/server-cert.pem", "--tls-key",
                        f"{p}/server-key.pem")
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        s.recv(18)
        s.sendall(struct.pack(">I", 3))
        for opt in (8, 3, 6):  # STRUCTURED_REPLY, LIST, INFO: all refused
            s.sendall(struct.pack(">QII", OPT_MAGIC, opt, 0))
            _, _, rtype, n = struct.unpack(">QIII", recv(s, 20))
            recv(s, n)
            self.assertEqual(rtype, ERR_TLS_REQD, opt)
        s.sendall(struct.pack(">QII", OPT_MAGIC, 1, 6) + b"secure")  # EXPORT_NAME
        self.assertEqual(s.recv(100), b"")  # closed
        s.close()

    def test_qemu_img_with_tls_creds_x509(self):
        d = self.x509_daemon()
        src = os.path.join(d.dir, "src.img")
        random_file(src, 8 * MiB)
        obj = f"tls-creds-x509,id=tls0,dir={self.pki},endpoint=client"
        target = (f"driver=nbd,host=127.0.0.1,port={d.port},export=secure,"
                  f"tls-creds=tls0")
        run("qemu-img", "convert", "-n", "--object", obj, "-f", "raw", src,
            "--target-image-opts", target)
        back = os.path.join(d.dir, "back.img")
        run("qemu-img", "convert", "--object", obj, "--image-opts", target,
            "-O", "raw", back)
        with open(src, "rb") as a, open(back, "rb") as b:
            self.assertEqual(a.read(), b.read(8 * MiB))
        info = run("qemu-img", "info", "--object", obj, "--image-opts", target).stdout
        self.assertIn("virtual size: 16 MiB", info)

    def test_psk(self):
        p = self.pki
        d = self.daemon(["name=secure,backend=memory,size=4MiB,tls=require"],
                        "--tls-psk", f"{p}/keys.psk")
        uri = f"nbds://alice@127.0.0.1:{d.port}/secure?tls-psk-file={p}/keys.psk"
        src = os.path.join(d.dir, "src.img")
        back = os.path.join(d.dir, "back.img")
        random_file(src, 4 * MiB)
        run("nbdcopy", src, uri)
        run("nbdcopy", uri, back)
        self.assertEqual(sha256(src), sha256(back))
        wrong = f"nbds://alice@127.0.0.1:{d.port}/secure?tls-psk-file={p}/wrong.psk"
        self.assertNotEqual(run("nbdinfo", wrong, check=False).returncode, 0)
        metrics = urllib.request.urlopen(f"http://{d.metrics}/metrics").read().decode()
        self.assertRegex(metrics,
                         r'nbdmgr_handshake_failures_total\{reason="tls_handshake"\} [1-9]')

    def test_tls_buffers_are_reported_and_given_back(self):
        # Each TLS connection holds fixed buffers outside the caps: the
        # daemon reports them (metrics and the stats API) while the
        # connections are open, and they go back to zero when they close.
        d = self.x509_daemon()
        per_connection = 64 * 1024 + 10 * (16 * 1024 + 512) + 16 * 1024

        def tls_bytes():
            m = urllib.request.urlopen(f"http://{d.metrics}/metrics").read().decode()
            return int(float(re.search(r"^nbdmgr_daemon_tls_buffer_bytes (\S+)$",
                                       m, re.M).group(1)))

        self.assertEqual(tls_bytes(), 0)
        handles = []
        for _ in range(3):
            h = nbd.NBD()
            h.set_uri_allow_local_file(True)
            h.connect_uri(self.tls_uri(d, "secure"))
            h.pwrite(b"x" * 4096, 0)
            handles.append(h)
        self.assertEqual(tls_bytes(), 3 * per_connection)
        stats = json.loads(d.nbdctl("-o", "json", "stats").stdout)
        self.assertEqual(int(stats["daemon"]["buffers"]["tls_bytes"]), 3 * per_connection)
        # A clear connection to the other export holds none.
        clear = nbd.NBD()
        clear.connect_uri(f"nbd://127.0.0.1:{d.port}/open")
        self.assertEqual(tls_bytes(), 3 * per_connection)
        for h in handles + [clear]:
            h.shutdown()
        del h, handles, clear
        deadline = time.monotonic() + 10
        while tls_bytes() != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(tls_bytes(), 0)

    def test_client_certificates_required_with_tls_ca(self):
        d = self.x509_daemon("--tls-ca", f"{self.pki}/ca-cert.pem")
        run("nbdinfo", self.tls_uri(d, "secure"))  # has client-cert.pem
        anon = self.tls_uri(d, "secure", certs=os.path.join(self.pki, "anon"))
        self.assertNotEqual(run("nbdinfo", anon, check=False).returncode, 0)

    def test_export_tls_through_the_api(self):
        d = self.x509_daemon()
        d.nbdctl("create", "vm1", "--memory", "1MiB", "--tls", "require")
        got = json.loads(d.nbdctl("-o", "json", "get", "vm1").stdout)
        self.assertEqual(got["tls"], "TLS_MODE_REQUIRE")
        self.assertNotEqual(run("nbdinfo", f"nbd://127.0.0.1:{d.port}/vm1",
                                check=False).returncode, 0)
        run("nbdinfo", self.tls_uri(d, "vm1"))
        d.nbdctl("update", "vm1", "--tls", "off")
        run("nbdinfo", f"nbd://127.0.0.1:{d.port}/vm1")
        p = d.nbdctl("update", "vm1", "--tls", "sometimes", check=False)
        self.assertEqual(p.returncode, 2)

    def test_tls_modes_need_credentials(self):
        d = self.daemon(["name=open,backend=memory,size=1MiB"])
        p = d.nbdctl("create", "vm1", "--memory", "1MiB", "--tls", "require", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("FAILED_PRECONDITION", p.stderr)
        self.assertIn("--tls-cert", p.stderr)

    def test_bad_tls_flags(self):
        from nbdmgr_fixture import NBDMGRD
        def nbdmgrd(*args):
            return subprocess.run([NBDMGRD, "--control-listen", "none", "--state-dir",
                                   "none", "--metrics-listen", "none", "--nbd-listen",
                                   "tcp:127.0.0.1:0", *args],
                                  capture_output=True, text=True, timeout=30)
        p = nbdmgrd("--export", "name=x,backend=memory,size=1M,tls=require")
        self.assertEqual(p.returncode, 2)
        self.assertIn("tls=require", p.stderr)
        p = nbdmgrd("--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key")
        self.assertEqual(p.returncode, 1)
        self.assertIn("/nonexistent.pem", p.stderr)
        p = nbdmgrd("--tls-cert", f"{self.pki}/server-cert.pem")
        self.assertEqual(p.returncode, 2)
        self.assertIn("--tls-key", p.stderr)
        bad = os.path.join(self.pki, "bad.psk")
        with open(bad, "w") as f:
            f.write("alice:nothex\n")
        p = nbdmgrd("--tls-psk", bad)
        self.assertEqual(p.returncode, 1)
        self.assertIn("line 1", p.stderr)
        p = nbdmgrd("--tls-cert", f"{self.pki}/server-cert.pem",
                    "--tls-key", f"{self.pki}/client-key.pem")
        self.assertEqual(p.returncode, 1)
        self.assertIn("--tls-key", p.stderr)
        self.assertRegex(p.stderr, "does not match|mismatch")


def recv(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("closed")
        buf += chunk
    return buf


if __name__ == "__main__":
    unittest.main()
