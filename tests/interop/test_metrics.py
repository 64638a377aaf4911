#!/usr/bin/python3
"""Interop: counters through /metrics, StatsService.GetStats and nbdctl stats,
backend errors (a file export on a full file system) told apart from the
client's, a real Prometheus server scraping the daemon, and scrapes that
succeed while slow HTTP clients hold connections open."""
import errno
import http.client
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

import nbd

from nbdmgr_fixture import (NBDCTL, Daemon, RawClient, grpc_api, random_file,
                            run, small_tmpfs)

MiB = 1 << 20
DEPLOY = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "prometheus")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    """{(name, frozenset(labels.items())): float} of a text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"malformed exposition line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def copy(src, dst, *extra):
    run("nbdcopy", "--connections=1", "--requests=4", "--request-size=1048576",
        *extra, src, dst)


class MetricsTest(unittest.TestCase):
    def setUp(self):
        self.d = Daemon(["name=disk,backend=memory,size=16MiB",
                         "name=other,backend=memory,size=1MiB"]).start()
        self.addCleanup(self.d.stop)

    def scrape(self):
        with urllib.request.urlopen(f"http://{self.d.metrics}/metrics", timeout=10) as r:
            self.assertEqual(r.status, 200)
            return parse_exposition(r.read().decode())

    def wait_for(self, name, expected, **labels):
        """Replies are counted just after they are written: wait a little."""
        deadline = time.time() + 10
        while True:
            samples = self.scrape()
            if value(samples, name, **labels) == expected or time.time() > deadline:
                return samples
            time.sleep(0.05)

    def known_io(self):
        """16 WRITEs of 1 MiB and a FLUSH, 16 READs of 1 MiB, one bad READ."""
        src = os.path.join(self.d.dir, "src.img")
        dst = os.path.join(self.d.dir, "dst.img")
        random_file(src, 16 * MiB)
        copy(src, self.d.uri("disk"), "--flush")
        copy(self.d.uri("disk"), dst, "--no-extents")
        with open(src, "rb") as a, open(dst, "rb") as b:
            self.assertEqual(a.read(), b.read())
        c = RawClient(self.d, "disk")
        c.request(0, 16 * MiB, 512)  # READ past the end
        self.assertEqual(c.simple_reply()[0], 22)  # EINVAL
        c.request(2, 0, 0)  # DISC
        c.close()

    def test_known_io_is_counted_exactly_in_metrics(self):
        self.known_io()
        self.wait_for("nbdmgr_requests_total", 1, export="disk", op="read",
                      result="EINVAL")
        # The last client's DISC ends its session just after that reply.
        s = self.wait_for("nbdmgr_connections", 0, transport="unix")
        req = "nbdmgr_requests_total"
        self.assertEqual(value(s, req, export="disk", op="write", result="ok"), 16)
        self.assertEqual(value(s, req, export="disk", op="read", result="ok"), 16)
        self.assertEqual(value(s, req, export="disk", op="read", result="EINVAL"), 1)
        self.assertEqual(value(s, req, export="disk", op="flush", result="ok"), 1)
        self.assertEqual(value(s, req, export="other", op="read", result="ok"), 0)
        self.assertEqual(value(s, "nbdmgr_written_bytes_total", export="disk"), 16 * MiB)
        self.assertEqual(value(s, "nbdmgr_read_bytes_total", export="disk"), 16 * MiB)
        self.assertEqual(value(s, "nbdmgr_request_duration_seconds_count",
                               export="disk", op="read"), 17)
        self.assertEqual(value(s, "nbdmgr_request_duration_seconds_bucket",
                               export="disk", op="write", le="+Inf"), 16)
        self.assertGreater(value(s, "nbdmgr_request_duration_seconds_sum",
                                 export="disk", op="write"), 0)
        self.assertEqual(value(s, "nbdmgr_requests_in_flight", export="disk"), 0)
        self.assertEqual(value(s, "nbdmgr_connections_total", transport="unix"), 3)
        self.assertEqual(value(s, "nbdmgr_connections", transport="unix"), 0)
        self.assertEqual(value(s, "nbdmgr_export_clients", export="disk"), 0)
        self.assertEqual(value(s, "nbdmgr_export_size_bytes", export="disk"), 16 * MiB)
        self.assertEqual(value(s, "nbdmgr_export_info", export="disk",
                               backend="memory", status="active"), 1)
        self.assertEqual(value(s, "nbdmgr_buffer_bytes_in_use", export="disk"), 0)
        self.assertGreater(value(s, "process_resident_memory_bytes"), 1 * MiB)
        self.assertGreater(value(s, "process_open_fds"), 3)
        self.assertGreater(value(s, "process_start_time_seconds"), time.time() - 300)
        self.assertTrue(any(n == "nbdmgr_build_info" for n, _ in s))
        # The bad READ was the client's: the backend never failed.
        self.assertFalse(any(n == "nbdmgr_backend_errors_total" for n, _ in s))

    def test_get_stats_and_nbdctl_report_the_same_numbers(self):
        self.known_io()
        self.wait_for("nbdmgr_requests_total", 1, export="disk", op="read",
                      result="EINVAL")
        grpc, pb, call = grpc_api(self.d.control)
        stats = call("StatsService", "GetStats", pb.stats.GetStatsRequest(),
                     pb.stats.Stats)
        self.assertEqual([e.name for e in stats.exports], ["exports/disk", "exports/other"])
        disk = stats.exports[0]
        ops = {o.op: o for o in disk.operations}
        self.assertEqual(ops["write"].results["ok"], 16)
        self.assertEqual(ops["read"].results["ok"], 16)
        self.assertEqual(ops["read"].results["EINVAL"], 1)
        self.assertEqual(ops["flush"].results["ok"], 1)
        self.assertEqual(ops["read"].latency[-1].cumulative_count, 17)
        self.assertEqual(disk.bytes_written, 16 * MiB)
        self.assertEqual(disk.bytes_read, 16 * MiB)
        self.assertEqual(stats.daemon.connections_total["unix"], 3)

        one = call("StatsService", "GetStats", pb.stats.GetStatsRequest(name="exports/other"),
                   pb.stats.Stats)
        self.assertEqual([e.name for e in one.exports], ["exports/other"])
        for name, code in (("exports/missing", grpc.StatusCode.NOT_FOUND),
                           ("disk", grpc.StatusCode.INVALID_ARGUMENT)):
            with self.assertRaises(grpc.RpcError) as err:
                call("StatsService", "GetStats", pb.stats.GetStatsRequest(name=name),
                     pb.stats.Stats)
            self.assertEqual(err.exception.code(), code, name)

        j = json.loads(self.d.nbdctl("stats", "-o", "json").stdout)
        disk_j = j["exports"][0]
        ops_j = {o["op"]: o for o in disk_j["operations"]}
        self.assertEqual(int(ops_j["write"]["results"]["ok"]), 16)
        self.assertEqual(int(ops_j["read"]["results"]["EINVAL"]), 1)
        self.assertEqual(ops_j["read"].get("backend_errors", {}), {})
        self.assertEqual(int(disk_j["bytes_written"]), 16 * MiB)
        self.assertEqual(int(disk_j["bytes_read"]), 16 * MiB)

        # The exposition nbdctl prints is the daemon's.
        text = self.d.nbdctl("stats", "disk", "-o", "prometheus").stdout
        mine = parse_exposition(text)
        served = self.scrape()
        for key, v in mine.items():
            if key[0].startswith("nbdmgr_requests_total") or key[0].endswith("_bytes_total"):
                self.assertEqual(served.get(key), v, key)
        self.assertEqual(value(mine, "nbdmgr_requests_total", export="disk",
                               op="write", result="ok"), 16)

    def test_table_shows_rates_while_io_runs(self):
        src = os.path.join(self.d.dir, "src.img")
        random_file(src, 16 * MiB)
        stop = threading.Event()

        def load():
            while not stop.is_set():
                copy(src, self.d.uri("disk"))
        t = threading.Thread(target=load)
        t.start()
        try:
            p = self.d.nbdctl("stats", "disk", "--watch", "500ms", "--count", "3")
        finally:
            stop.set()
            t.join()
        lines = p.stdout.splitlines()
        headers = [ln for ln in lines if ln.startswith("EXPORT")]
        self.assertEqual(len(headers), 3, p.stdout)
        self.assertIn("WR MB/s", headers[0])
        rows = [ln.split() for ln in lines if ln.startswith("disk ")]
        self.assertEqual(len(rows), 3, p.stdout)
        col = headers[0].split().index("WRITE/s")
        self.assertTrue(any(float(r[col]) > 0 for r in rows), p.stdout)
        self.assertTrue(all(ln.startswith("daemon:") for ln in lines
                            if ln and not ln.startswith(("EXPORT", "disk "))), p.stdout)

    def test_nbdctl_stats_errors(self):
        p = self.d.nbdctl("stats", "-o", "xml", check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("-o must be", p.stderr)
        p = self.d.nbdctl("stats", "--watch", "soon", check=False)
        self.assertEqual(p.returncode, 2)
        p = self.d.nbdctl("stats", "nosuch", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("NOT_FOUND", p.stderr)
        self.assertIn("nosuch", p.stderr)

    def test_handshake_failures_by_reason(self):
        # A client that sends unknown flags, and one that hangs up.
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.d.sock)
        s.recv(18)
        s.sendall(struct.pack(">I", 0xFFFFFFFF))
        s.recv(1)
        s.close()
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.d.sock)
        s.recv(18)
        s.close()
        samples = self.wait_for("nbdmgr_handshake_failures_total", 1, reason="client_closed")
        self.assertEqual(value(samples, "nbdmgr_handshake_failures_total",
                               reason="protocol_error"), 1)
        self.assertEqual(value(samples, "nbdmgr_handshake_failures_total",
                               reason="client_closed"), 1)

    def test_clients_and_in_flight_are_live(self):
        c = RawClient(self.d, "disk")
        s = self.wait_for("nbdmgr_export_clients", 1, export="disk")
        self.assertEqual(value(s, "nbdmgr_export_clients", export="disk"), 1)
        self.assertEqual(value(s, "nbdmgr_connections", transport="unix"), 1)
        c.request(2, 0, 0)
        c.close()
        s = self.wait_for("nbdmgr_connections", 0, transport="unix")
        self.assertEqual(value(s, "nbdmgr_export_clients", export="disk"), 0)


class BackendErrorsTest(unittest.TestCase):
    """A file export on a file system that fills up: the WRITEs it refuses
    (ENOSPC from the backend) are counted as backend errors, a client's bad
    requests (one with the same ENOSPC, for a write past the end) are not."""

    def setUp(self):
        self.mnt = small_tmpfs(self)
        self.d = Daemon([f"name=disk,backend=file,path={self.mnt}/disk.img,size=16MiB"],
                        extra=["--allow-path", self.mnt]).start()
        self.addCleanup(self.d.cleanup)

    def scrape(self):
        with urllib.request.urlopen(f"http://{self.d.metrics}/metrics", timeout=10) as r:
            return parse_exposition(r.read().decode())

    def test_backend_errors_are_told_apart_from_the_clients(self):
        h = nbd.NBD()
        h.connect_uri(self.d.uri("disk"))
        chunk = 256 * 1024
        failed = ok = 0
        for i in range(16 * MiB // chunk):  # 16 MiB into 4 MiB
            try:
                h.pwrite(bytes([i + 1]) * chunk, i * chunk, nbd.CMD_FLAG_FUA)
                ok += 1
            except nbd.Error as e:
                self.assertIn(e.errno, (errno.ENOSPC, "ENOSPC"), str(e))
                failed += 1
        self.assertGreater(failed, 0, "a 4 MiB file system took 16 MiB")
        self.assertGreater(ok, 4)
        h.shutdown()
        # The client's own mistakes: nothing reaches the backend.
        c = RawClient(self.d, "disk")
        c.request(1, 16 * MiB, 512, cookie=7, payload=b"\0" * 512)  # WRITE past the end
        self.assertEqual(c.simple_reply(), (errno.ENOSPC, 7))
        c.request(0, 16 * MiB, 512, cookie=8)  # READ past the end
        self.assertEqual(c.simple_reply(), (errno.EINVAL, 8))
        c.request(2, 0, 0)  # DISC
        c.close()

        deadline = time.time() + 10
        while True:
            s = self.scrape()
            if (value(s, "nbdmgr_requests_total", export="disk", op="read",
                      result="EINVAL") == 1 or time.time() > deadline):
                break
            time.sleep(0.05)
        self.assertEqual(value(s, "nbdmgr_requests_total", export="disk", op="write",
                               result="ENOSPC"), failed + 1)
        self.assertEqual(value(s, "nbdmgr_requests_total", export="disk", op="write",
                               result="ok"), ok)
        self.assertEqual(value(s, "nbdmgr_requests_total", export="disk", op="read",
                               result="EINVAL"), 1)
        backend = {labels: v for (n, labels), v in s.items()
                   if n == "nbdmgr_backend_errors_total"}
        self.assertEqual(backend, {frozenset({("export", "disk"), ("op", "write"),
                                              ("error", "ENOSPC")}): failed})

        j = json.loads(self.d.nbdctl("stats", "-o", "json").stdout)
        ops = {o["op"]: o for o in j["exports"][0]["operations"]}
        self.assertEqual(int(ops["write"]["results"]["ENOSPC"]), failed + 1)
        self.assertEqual({k: int(v) for k, v in ops["write"]["backend_errors"].items()},
                         {"ENOSPC": failed})
        self.assertEqual(ops["read"].get("backend_errors", {}), {})
        table = self.d.nbdctl("stats", "disk").stdout.splitlines()
        self.assertIn("BE-ERR/s", table[0].split())
        text = self.d.nbdctl("stats", "disk", "-o", "prometheus").stdout
        self.assertEqual(value(parse_exposition(text), "nbdmgr_backend_errors_total",
                               export="disk", op="write", error="ENOSPC"), failed)


class SlowHttpClientsTest(unittest.TestCase):
    """Slow HTTP clients cannot starve scrapes (a request head has 10 s)."""

    HEADER_TIMEOUT = 10

    def setUp(self):
        self.d = Daemon(["name=disk,backend=memory,size=1MiB"]).start()
        self.addCleanup(self.d.stop)
        host, port = self.d.metrics.rsplit(":", 1)
        self.addr = (host, int(port))

    def slow_client(self):
        s = socket.create_connection(self.addr, timeout=10)
        self.addCleanup(s.close)
        s.sendall(b"GET /metr")
        return s

    def scrape(self):
        with urllib.request.urlopen(f"http://{self.d.metrics}/metrics", timeout=10) as r:
            self.assertEqual(r.status, 200)
            return r.read().decode()

    def test_scrapes_succeed_while_150_clients_trickle_their_headers(self):
        slow = [self.slow_client() for _ in range(150)]
        stop = threading.Event()
        failures = []

        def trickle():
            # One byte a second from each, as long as the server keeps them.
            for ch in b"ics HTTP/1.1\r\nX: ":
                for s in slow:
                    try:
                        s.send(bytes([ch]))
                    except OSError:
                        pass
                if stop.wait(1):
                    return
        t = threading.Thread(target=trickle)
        t.start()
        try:
            for _ in range(5):
                start = time.time()
                try:
                    text = self.scrape()
                except OSError as e:
                    failures.append(repr(e))
                    continue
                self.assertIn("nbdmgr_build_info", text)
                self.assertLess(time.time() - start, 5)
                time.sleep(0.5)
            # The slow ones are all still connected (under the header deadline).
            for s in slow:
                s.setblocking(False)
                try:
                    self.assertNotEqual(s.recv(1), b"", "closed early")
                except BlockingIOError:
                    pass
        finally:
            stop.set()
            t.join()
            for s in slow:
                s.close()
        self.assertEqual(failures, [])
        self.assertIn("nbdmgr_build_info", self.scrape())

    def test_unfinished_header_is_closed_at_the_deadline(self):
        s = self.slow_client()
        start = time.time()
        # One byte a second does not extend the deadline; the server closes
        # without an answer.
        data = None
        for ch in b"ics HTTP/1.1\r\nX-Slow: " + b"x" * 30:
            try:
                s.send(bytes([ch]))
            except OSError:
                data = b""
                break
            readable, _, _ = select.select([s], [], [], 1)
            if readable:
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                break
        elapsed = time.time() - start
        self.assertEqual(data, b"", "the server did not close the connection")
        self.assertGreater(elapsed, self.HEADER_TIMEOUT - 1)
        self.assertLess(elapsed, self.HEADER_TIMEOUT + 5)
        self.assertIn("nbdmgr_build_info", self.scrape())

    def test_keep_alive_other_paths_methods_and_head(self):
        conn = http.client.HTTPConnection(*self.addr, timeout=10)
        self.addCleanup(conn.close)
        for method, path, status in (("GET", "/metrics", 200),
                                     ("GET", "/metrics?x=1", 200),
                                     ("HEAD", "/metrics", 200),
                                     ("GET", "/", 404),
                                     ("POST", "/metrics", 405)):
            conn.request(method, path)
            r = conn.getresponse()
            body = r.read()
            self.assertEqual(r.status, status, (method, path))
            if status == 200:
                self.assertEqual(r.getheader("Content-Type"),
                                 "text/plain; version=0.0.4; charset=utf-8")
                self.assertEqual(body == b"", method == "HEAD")
                self.assertGreater(int(r.getheader("Content-Length")), 0)
        conn.request("GET", "/metrics", headers={"Connection": "close"})
        r = conn.getresponse()
        self.assertIn(b"nbdmgr_build_info", r.read())
        self.assertEqual(r.getheader("Connection"), "close")


class RequestStatsOffTest(unittest.TestCase):
    def test_off_leaves_request_counters_at_zero(self):
        d = Daemon(["name=disk,backend=memory,size=16MiB"],
                   extra=["--request-stats", "off"]).start()
        self.addCleanup(d.stop)
        src = os.path.join(d.dir, "src.img")
        random_file(src, 16 * MiB)
        copy(src, d.uri("disk"))
        with urllib.request.urlopen(f"http://{d.metrics}/metrics", timeout=10) as r:
            s = parse_exposition(r.read().decode())
        self.assertEqual(value(s, "nbdmgr_requests_total", export="disk", op="write",
                               result="ok"), 0)
        self.assertEqual(value(s, "nbdmgr_written_bytes_total", export="disk"), 0)
        self.assertEqual(value(s, "nbdmgr_connections_total", transport="unix"), 1)


class PrometheusEndToEndTest(unittest.TestCase):
    """A real Prometheus scrapes the daemon and finds the series."""

    def test_rules_are_valid_and_pass_their_unit_tests(self):
        run("promtool", "check", "rules", os.path.join(DEPLOY, "rules.yml"))
        run("promtool", "check", "config", os.path.join(DEPLOY, "prometheus.yml"))
        run("promtool", "test", "rules", os.path.join(DEPLOY, "rules_test.yml"))

    def test_prometheus_scrapes_the_daemon(self):
        d = Daemon(["name=disk,backend=memory,size=16MiB"]).start()
        self.addCleanup(d.stop)
        src = os.path.join(d.dir, "src.img")
        random_file(src, 16 * MiB)
        copy(src, d.uri("disk"))

        work = tempfile.mkdtemp(prefix="nbdmgr-prom-")
        self.addCleanup(shutil.rmtree, work, True)
        shutil.copy(os.path.join(DEPLOY, "rules.yml"), work)
        with open(os.path.join(DEPLOY, "prometheus.yml")) as f:
            config = f.read()
        self.assertIn('"127.0.0.1:9810"', config)
        config = (config.replace('"127.0.0.1:9810"', f'"{d.metrics}"')
                  .replace("scrape_interval: 15s", "scrape_interval: 1s")
                  .replace("evaluation_interval: 15s", "evaluation_interval: 1s"))
        with open(os.path.join(work, "prometheus.yml"), "w") as f:
            f.write(config)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(os.path.join(work, "prometheus.log"), "wb")
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={work}/prometheus.yml",
             f"--storage.tsdb.path={work}/data", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=log)

        def stop():
            prom.terminate()
            prom.wait(timeout=30)
            log.close()
        self.addCleanup(stop)

        def api(path):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}",
                                        timeout=5) as r:
                return json.loads(r.read())

        query = urllib.parse.quote('nbdmgr_written_bytes_total{export="disk"}')
        deadline = time.time() + 90
        result = []
        while time.time() < deadline:
            try:
                result = api(f"query?query={query}")["data"]["result"]
            except OSError:
                result = []
            if result:
                break
            time.sleep(0.5)
        if not result:
            self.fail("Prometheus never found the series:\n" +
                      open(os.path.join(work, "prometheus.log"), errors="replace").read()[-3000:])
        self.assertEqual(result[0]["metric"]["job"], "nbdmgr")
        self.assertEqual(result[0]["metric"]["instance"], d.metrics)
        self.assertEqual(float(result[0]["value"][1]), 16 * MiB)
        up = api("query?query=" + urllib.parse.quote('up{job="nbdmgr"}'))["data"]["result"]
        self.assertEqual(up[0]["value"][1], "1")
        rules = api("rules")["data"]["groups"]
        names = {r["name"] for g in rules for r in g["rules"]}
        self.assertIn("NbdmgrBufferCapFull", names)
        self.assertIn("NbdmgrDaemonDown", names)
        self.assertTrue(all(r["health"] in ("ok", "unknown") for g in rules for r in g["rules"]))


if __name__ == "__main__":
    unittest.main()
