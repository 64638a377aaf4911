#!/usr/bin/python3
"""Deploy artifacts: the config file, the systemd unit (run under a
NOTIFY_SOCKET the test owns), the Debian package, and the Kubernetes
manifests (parsed and checked; no cluster runs here)."""
import glob
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import yaml

from nbdmgr_fixture import NBDCTL, NBDMGRD, run

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
DEPLOY = os.path.join(ROOT, "deploy")
BUILD = os.environ.get("NBDMGR_BUILD_DIR") or os.path.join(ROOT, "build")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConfigFileTest(unittest.TestCase):
    def check(self, *args):
        return subprocess.run([NBDMGRD, *args, "--check-config"], capture_output=True,
                              text=True, timeout=30)

    def test_example_config_is_valid(self):
        p = self.check("--config", os.path.join(DEPLOY, "nbdmgrd.conf"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("nbd listen: tcp:0.0.0.0:10809", p.stdout)
        self.assertIn("export: scratch (memory 1GiB, default)", p.stdout)
        self.assertIn("memory cap: 1GiB", p.stdout)
        self.assertIn("qos group: tenants (iops=20000,bandwidth=1GiB)", p.stdout)

    def test_flags_override_the_file(self):
        p = self.check("--config", os.path.join(DEPLOY, "nbdmgrd.conf"),
                       "--metrics-listen", "none", "--nbd-listen", "tcp:127.0.0.1:7000",
                       "--export", "name=extra,backend=null,size=1MiB")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("metrics listen: none", p.stdout)
        self.assertIn("nbd listen: tcp:127.0.0.1:7000", p.stdout)
        self.assertNotIn("0.0.0.0:10809", p.stdout)  # the list was replaced
        self.assertIn("export: scratch", p.stdout)    # exports add up
        self.assertIn("export: extra", p.stdout)

    def test_bad_files_name_the_problem(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        cases = [
            ("nbd_listen: \"tcp:1.2.3.4:5\"\nbogus_field: 1\n", "line 2"),
            ("nbd_listen: \"ftp://x\"\n", "--nbd-listen"),
            ("exports { name: \"a b\" memory { size_bytes: 1 } }\n", "exports[0]"),
            ("exports { name: \"x\" memory { size_bytes: 1048576 } tls: TLS_MODE_REQUIRE }\n",
             "tls=require"),
            ("log_level: \"loud\"\n", "--log-level"),
        ]
        for text, message in cases:
            path = os.path.join(d, "bad.conf")
            with open(path, "w") as f:
                f.write(text)
            p = self.check("--config", path)
            self.assertEqual(p.returncode, 2, text)
            self.assertIn(message, p.stderr, text)
        p = self.check("--config", os.path.join(d, "missing.conf"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("missing.conf", p.stderr)


class SystemdTest(unittest.TestCase):
    def unit(self):
        with open(os.path.join(DEPLOY, "systemd", "nbdmgrd.service")) as f:
            return f.read()

    def test_unit_is_hardened_notify_service(self):
        text = self.unit()
        keys = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
        self.assertEqual(keys["Type"], "notify")
        for k, v in {"ProtectSystem": "strict", "NoNewPrivileges": "yes",
                     "StateDirectory": "nbdmgr", "RuntimeDirectory": "nbdmgr",
                     "CapabilityBoundingSet": "", "PrivateTmp": "yes"}.items():
            self.assertEqual(keys.get(k), v, k)
        self.assertTrue(keys["ExecStart"].startswith("/usr/sbin/nbdmgrd --config "))
        # systemd itself accepts the unit (with our binary in place).
        if shutil.which("systemd-analyze"):
            d = tempfile.mkdtemp()
            self.addCleanup(shutil.rmtree, d)
            path = os.path.join(d, "nbdmgrd.service")
            with open(path, "w") as f:
                f.write(text.replace("/usr/sbin/nbdmgrd", os.path.abspath(NBDMGRD)))
            p = subprocess.run(["systemd-analyze", "verify", "--man=no", path],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)

    def test_exec_start_notifies_ready_and_stopping(self):
        exec_start = re.search(r"^ExecStart=(.*)$", self.unit(), re.M).group(1)
        argv = shlex.split(exec_start)
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        conf = os.path.join(d, "nbdmgrd.conf")
        with open(conf, "w") as f:
            f.write(f'nbd_listen: "tcp:127.0.0.1:{free_port()}"\n'
                    f'control_listen: "unix:{d}/control.sock"\n'
                    f'state_dir: "{d}/state"\nmetrics_listen: "none"\n'
                    'exports { name: "disk" memory { size_bytes: 1048576 } }\n')
        self.assertEqual(argv[1:3], ["--config", "/etc/nbdmgr/nbdmgrd.conf"])
        argv = [os.path.abspath(NBDMGRD), "--config", conf] + argv[3:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(os.path.join(d, "notify"))
        sock.settimeout(15)
        env = dict(os.environ, NOTIFY_SOCKET=os.path.join(d, "notify"))
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            ready = sock.recv(4096).decode()
            self.assertIn("READY=1", ready)
            self.assertIn("STATUS=serving 1 export(s)", ready)
            # It really serves when it says so.
            run(NBDCTL, "--control", f"unix:{d}/control.sock", "health")
            proc.send_signal(signal.SIGTERM)
            self.assertIn("STOPPING=1", sock.recv(4096).decode())
            self.assertEqual(proc.wait(timeout=30), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


class DebianPackageTest(unittest.TestCase):
    def test_deb_has_everything(self):
        out = tempfile.mkdtemp(prefix="nbdmgr-deb-")
        self.addCleanup(shutil.rmtree, out)
        run("cpack", "-G", "DEB", "-B", out, cwd=BUILD, timeout=600)
        debs = glob.glob(os.path.join(out, "nbdmgr_*.deb"))
        self.assertEqual(len(debs), 1, os.listdir(out))
        fields = run("dpkg-deb", "-f", debs[0]).stdout
        self.assertIn("Package: nbdmgr", fields)
        self.assertRegex(fields, r"Depends: .*libgrpc\+\+")
        self.assertRegex(fields, r"Depends: .*libsystemd0")
        root = os.path.join(out, "root")
        run("dpkg-deb", "-x", debs[0], root)
        for f in ["usr/sbin/nbdmgrd", "usr/bin/nbdctl",
                  "usr/lib/systemd/system/nbdmgrd.service", "etc/nbdmgr/nbdmgrd.conf",
                  "usr/share/man/man8/nbdmgrd.8.gz", "usr/share/man/man1/nbdctl.1.gz"]:
            self.assertTrue(os.path.exists(os.path.join(root, f)), f)
        ctrl = run("sh", "-c", f"dpkg-deb --ctrl-tarfile {debs[0]} | tar xO ./conffiles").stdout
        self.assertEqual(ctrl.split(), ["/etc/nbdmgr/nbdmgrd.conf"])
        version = run(os.path.join(root, "usr/sbin/nbdmgrd"), "--version").stdout
        self.assertRegex(version, r"^nbdmgrd \d+\.\d+\.\d+")
        man = run("sh", "-c", f"zcat {root}/usr/share/man/man8/nbdmgrd.8.gz").stdout
        self.assertIn(".TH NBDMGRD", man)
        self.assertIn("--nbd-listen", man.replace("\\-", "-"))
        # The packaged config works with the packaged daemon.
        p = run(os.path.join(root, "usr/sbin/nbdmgrd"), "--config",
                os.path.join(root, "etc/nbdmgr/nbdmgrd.conf"), "--check-config")
        self.assertIn("configuration is valid", p.stdout)


class KubernetesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs = {}
        for path in sorted(glob.glob(os.path.join(DEPLOY, "kubernetes", "*.yaml"))):
            with open(path) as f:
                for doc in yaml.safe_load_all(f):
                    cls.docs[(doc["kind"], doc.get("metadata", {}).get("name"))] = doc

    def test_every_manifest_has_the_basics(self):
        self.assertGreaterEqual(len(self.docs), 7)
        for (kind, name), doc in self.docs.items():
            self.assertIn("apiVersion", doc, kind)
            if kind != "Kustomization":
                self.assertTrue(name, kind)
                if kind != "Namespace":
                    self.assertEqual(doc["metadata"]["namespace"], "nbdmgr", kind)

    def test_kustomization_lists_every_file(self):
        listed = set(self.docs[("Kustomization", None)]["resources"])
        files = {os.path.basename(p) for p in glob.glob(os.path.join(DEPLOY, "kubernetes", "*.yaml"))}
        self.assertEqual(listed, files - {"kustomization.yaml"})

    def test_daemonset(self):
        ds = self.docs[("DaemonSet", "nbdmgrd")]
        spec = ds["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        for k, v in spec["selector"]["matchLabels"].items():
            self.assertEqual(labels.get(k), v)
        self.assertTrue(pod["hostNetwork"])
        self.assertGreater(pod["terminationGracePeriodSeconds"], 30)
        (c,) = pod["containers"]
        self.assertTrue(c["image"])
        self.assertFalse(c["securityContext"]["privileged"])
        self.assertEqual(c["securityContext"]["capabilities"]["drop"], ["ALL"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        for name in mounts.values():
            self.assertIn(name, volumes)
        self.assertEqual(volumes[mounts["/run/nbdmgr"]]["hostPath"]["path"], "/run/nbdmgr")
        self.assertEqual(volumes[mounts["/var/lib/nbdmgr"]]["hostPath"]["path"],
                         "/var/lib/nbdmgr")
        config_volume = volumes[mounts["/etc/nbdmgr"]]
        self.assertIn(("ConfigMap", config_volume["configMap"]["name"]), self.docs)
        self.assertEqual(c["args"], ["--config", "/etc/nbdmgr/nbdmgrd.conf"])
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            cmd = c[probe]["exec"]["command"]
            self.assertEqual(cmd[0], "/usr/bin/nbdctl", probe)
            self.assertIn("health", cmd, probe)
            self.assertIn("unix:/run/nbdmgr/control.sock", cmd, probe)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        self.assertEqual(ports, {"nbd": 10809, "metrics": 9810})

    def test_ceph_config_and_key_come_from_a_secret(self):
        ds = self.docs[("DaemonSet", "nbdmgrd")]
        pod = ds["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/ceph")
        self.assertTrue(mount["readOnly"])
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        secret = self.docs[("Secret", volume["secret"]["secretName"])]
        self.assertEqual(volume["secret"]["defaultMode"], 0o400)
        data = secret["stringData"]
        self.assertIn("mon host", data["ceph.conf"])
        keyrings = [k for k in data if k.startswith("ceph.client.") and k.endswith(".keyring")]
        self.assertEqual(len(keyrings), 1)
        user = keyrings[0][len("ceph.client."):-len(".keyring")]
        self.assertIn(f"[client.{user}]", data[keyrings[0]])

    def test_configmap_is_a_valid_daemon_config(self):
        cm = self.docs[("ConfigMap", "nbdmgrd-config")]
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        path = os.path.join(d, "nbdmgrd.conf")
        with open(path, "w") as f:
            f.write(cm["data"]["nbdmgrd.conf"])
        p = run(NBDMGRD, "--config", path, "--check-config")
        self.assertIn("control listen: unix:/run/nbdmgr/control.sock", p.stdout)
        self.assertIn("metrics listen: 0.0.0.0:9810", p.stdout)
        self.assertIn("state dir: /var/lib/nbdmgr", p.stdout)
        self.assertIn("qos group: node (iops=200000,bandwidth=4GiB)", p.stdout)

    def test_monitoring_matches_the_service_and_the_rules(self):
        svc = self.docs[("Service", "nbdmgrd-metrics")]
        sm = self.docs[("ServiceMonitor", "nbdmgrd")]
        for k, v in sm["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(svc["metadata"]["labels"].get(k), v)
        self.assertIn(sm["spec"]["endpoints"][0]["port"],
                      [p["name"] for p in svc["spec"]["ports"]])
        # job="nbdmgr", as the rules expect.
        self.assertEqual(svc["metadata"]["labels"][sm["spec"]["jobLabel"]], "nbdmgr")
        with open(os.path.join(DEPLOY, "prometheus", "rules.yml")) as f:
            rules = yaml.safe_load(f)
        self.assertEqual(self.docs[("PrometheusRule", "nbdmgr")]["spec"], rules)


if __name__ == "__main__":
    unittest.main()
