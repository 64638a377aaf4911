"""A throwaway single-node Ceph cluster (1 mon, 1 memstore OSD) for tests.

Runs with Debian's /usr/bin/python3 and Ceph 16 (Pacific) from Debian 12:
ceph-mon, ceph-osd, ceph-common (ceph CLI, monmaptool, python3-rados, python3-rbd).
deploy/install-deps.sh installs them. No mgr, no systemd, no disks, no root paths.

Contract
--------
    with CephCluster() as c:          # or c = CephCluster(); c.start(); ...; c.stop()
        c.create_image("img", 64 << 20)
        r = c.rados(); ...; r.shutdown()

``start()``
  * creates a fresh temp dir (``dir``) holding all state: ceph.conf, keyrings, mon store,
    OSD data, logs (``dir/log``), admin sockets and pid files (``dir/run``);
  * starts mon.a on 127.0.0.1 port P (msgr2) and P+1 (msgr1), P a free port found by
    binding port 0 (retried with new ports if the mon still loses the race for it), and
    osd.0 (objectstore memstore: data lives in the OSD's RAM, capped by ``memstore_bytes``),
    which binds ports from 6800 up, skipping ports in use, so several clusters can run at once;
  * cephx is on everywhere; creates pool ``rbd`` (1 replica, 8 PGs) and runs ``rbd pool init``;
  * every wait is a bounded polling loop; a timeout or a daemon that exits raises
    ``CephClusterError`` with the tail of the daemon logs;
  * if it fails half way, everything it started is stopped and ``dir`` removed before it raises.

``stop()``
  stops osd.0 then mon.a (SIGTERM, bounded wait, then SIGKILL), by the PIDs this object
  started (never by name), then removes ``dir``. Idempotent. Clusters still running when the
  interpreter exits are stopped by an atexit hook; and when ``start()`` runs in the main thread
  the daemons are started with a parent-death signal (SIGKILL, via setpriv), so a test process
  killed outright leaves no daemons behind either.

Attributes (valid after ``start()``)
  ``conf``     ceph.conf any client can use: mon host, cephx, ``[client] keyring`` = admin keyring
  ``keyring``  the client.admin keyring
  ``user``     "admin" (the rados id: the client name is client.admin)
  ``fsid``     cluster fsid (str)
  ``dir``      the temp dir
  ``mon_port`` P (msgr2; msgr1 is P+1); ``mon_host`` the "mon host" value
  ``pids``     {"mon.a": pid, "osd.0": pid} of the running daemons
  ``start_seconds`` / ``stop_seconds``  how long start()/stop() took

Helpers
  ``create_image(name, size, pool="rbd", features=None)``  python rbd, as client.admin
  ``rados(user="admin", keyring=None)``  a connected rados.Rados; the caller shuts it down
  ``add_user(name, caps)``  creates client.<name> with caps such as
        {"mon": "profile rbd", "osd": "profile rbd-read-only"} ({} = no access at all),
        writes its keyring to dir/client.<name>.keyring and returns that path
  ``mon_command(cmd_dict, inbuf=b"")``  a mon command as client.admin through librados,
        returns its output (str); raises CephClusterError on failure
  ``ceph(*args, check=True)``  runs the ceph CLI as client.admin, returns stdout (~0.3 s a call:
        for rare calls; loops should use ``mon_command``)
  ``log_tail(lines=30)``  the end of every daemon log, for failure messages
  ``freeze(name)`` / ``thaw(name)``  SIGSTOP / SIGCONT a daemon ("osd.0"), returning only
        once every one of its threads has stopped / left the stopped state. kill() returns
        before the stop takes effect: on a loaded machine a messenger thread can go on
        answering for milliseconds after SIGSTOP, so a test that sends I/O right after a bare
        kill() may see it answered.
"""
import atexit
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid

import rados  # python3-rados
import rbd  # python3-rbd

__all__ = ["CephCluster", "CephClusterError"]

# OSDs bind their 3 messengers (public, cluster, heartbeat: ~8 ports with msgr v1+v2) from here
# up to OSD_PORT_MAX, skipping ports already taken, e.g. by another cluster's OSD.
OSD_PORT_MIN = 6800
OSD_PORT_MAX = 7300

START_TIMEOUT = 60.0   # per wait during start(): mon up, OSD up, pool ready
STOP_TIMEOUT = 15.0    # per daemon: SIGTERM, then SIGKILL after this many seconds
TOOL_TIMEOUT = 60.0    # monmaptool, ceph-mon --mkfs, ceph-osd --mkfs, ceph CLI

# Started and not yet stopped: strong references, so that a cluster nobody refers to any more
# still runs until the atexit hook stops it (a weak set would let it be collected unstopped).
_live = set()


@atexit.register
def _stop_all_at_exit():
    for c in list(_live):
        try:
            c.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


class CephClusterError(RuntimeError):
    pass


class _PortTaken(CephClusterError):
    """The mon could not bind the port picked for it (someone took it meanwhile)."""


def _gen_key():
    """A cephx secret as ceph-authtool --gen-key prints it (CryptoKey::encode, base64).

    u16 type (1 = AES), utime_t created (u32 sec, u32 nsec), u16 length, 16 random bytes.
    """
    now = time.time()
    raw = struct.pack("<HIIH", 1, int(now), int((now % 1) * 1e9), 16) + os.urandom(16)
    return base64.b64encode(raw).decode()


def _keyring_section(name, key, caps):
    lines = [f"[{name}]", f"\tkey = {key}"]
    lines += [f'\tcaps {k} = "{v}"' for k, v in sorted(caps.items())]
    return "\n".join(lines) + "\n"


def _port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port_pair():
    """P such that P and P+1 are free on 127.0.0.1 now, outside the OSD port range."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 1 > 65535 or (OSD_PORT_MIN <= p + 1 and p <= OSD_PORT_MAX):
            continue
        if _port_free(p) and _port_free(p + 1):
            return p
    raise CephClusterError("no pair of free ports P, P+1 on 127.0.0.1")


def _tail(path, lines):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return data[-lines:]


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


class CephCluster:
    """One mon + one memstore OSD on 127.0.0.1 in a temp dir. See the module docstring."""

    MON_ID = "a"
    OSD_ID = 0

    def __init__(self, *, memstore_bytes=1 << 30, base_dir=None, pool="rbd",
                 extra_conf=None, port_attempts=3):
        """memstore_bytes: the OSD's capacity (held in its RAM as data is written; the OSD
        reports full at 95%). base_dir: where the temp dir goes (default: $TMPDIR or /tmp).
        pool: the RBD pool created and initialised by start() (None: no pool).
        extra_conf: {option: value} added to [global] of ceph.conf (the [mon], [osd] and
        [client] sections set data paths, keyrings, logs and the objectstore)."""
        self.memstore_bytes = memstore_bytes
        self.base_dir = base_dir
        self.pool = pool
        self.extra_conf = dict(extra_conf or {})
        self.port_attempts = port_attempts
        self.user = "admin"
        self.dir = self.conf = self.keyring = self.fsid = None
        self.mon_port = self.mon_host = None
        self.start_seconds = self.stop_seconds = None
        self._procs = {}      # "mon.a"/"osd.0" -> Popen, in start order
        self._admin = None    # rados.Rados as client.admin, used by the helpers
        self._lock = threading.Lock()

    # ---- context manager -------------------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def pids(self):
        return {name: p.pid for name, p in self._procs.items() if p.poll() is None}

    def freeze(self, name, timeout=10.0):
        """SIGSTOPs daemon ``name`` and waits until all its threads are stopped."""
        pid = self._procs[name].pid
        os.kill(pid, signal.SIGSTOP)
        self._wait_thread_states(name, pid, lambda s: s in "Tt", "stopped", timeout)

    def thaw(self, name, timeout=10.0):
        """SIGCONTs daemon ``name`` and waits until none of its threads is stopped."""
        pid = self._procs[name].pid
        os.kill(pid, signal.SIGCONT)
        self._wait_thread_states(name, pid, lambda s: s not in "Tt", "running", timeout)

    @staticmethod
    def _thread_states(pid):
        states = []
        task_dir = f"/proc/{pid}/task"
        for tid in os.listdir(task_dir):
            try:
                with open(f"{task_dir}/{tid}/stat") as f:
                    stat = f.read()
            except OSError:  # the thread has just exited
                continue
            states.append(stat[stat.rindex(")") + 2])  # field 3, after "(comm)"
        return states

    def _wait_thread_states(self, name, pid, ok, what, timeout):
        deadline = time.monotonic() + timeout
        while True:
            states = self._thread_states(pid)
            if states and all(ok(s) for s in states):
                return
            if time.monotonic() > deadline:
                raise CephClusterError(f"{name} (pid {pid}): threads not all {what} after "
                                       f"{timeout} s: states {''.join(states)}")
            time.sleep(0.001)

    @property
    def running(self):
        return self.dir is not None

    # ---- start -----------------------------------------------------------------------------

    def start(self):
        """Brings the cluster up; see the module docstring. Returns self."""
        if self.running:
            raise CephClusterError(f"cluster already started in {self.dir}")
        t0 = time.monotonic()
        for attempt in range(1, self.port_attempts + 1):
            try:
                self._start_once()
                break
            except _PortTaken:
                self._teardown_quietly()
                if attempt == self.port_attempts:
                    raise
            except CephClusterError:
                self._teardown_quietly()
                raise
            except Exception as e:  # e.g. rados.TimedOut: add the daemons' log tails
                err = self._error(f"starting the cluster failed: {e!r}")
                self._teardown_quietly()
                raise err from e
            except BaseException:  # KeyboardInterrupt
                self._teardown_quietly()
                raise
        _live.add(self)
        self.start_seconds = time.monotonic() - t0
        return self

    def _start_once(self):
        self.dir = tempfile.mkdtemp(prefix="nbdmgr-ceph-", dir=self.base_dir)
        for sub in ("log", "run", "crash", f"mon.{self.MON_ID}", f"osd.{self.OSD_ID}"):
            os.mkdir(os.path.join(self.dir, sub))
        self.fsid = str(uuid.uuid4())
        self.mon_port = _free_port_pair()
        self.mon_host = f"[v2:127.0.0.1:{self.mon_port},v1:127.0.0.1:{self.mon_port + 1}]"
        self.conf = os.path.join(self.dir, "ceph.conf")
        self.keyring = os.path.join(self.dir, "client.admin.keyring")
        self._write_conf()

        # Keys: mon. and client.admin go into the mon's mkfs keyring; clients get only theirs.
        admin_caps = {"mon": "allow *", "osd": "allow *", "mgr": "allow *", "mds": "allow *"}
        admin = _keyring_section("client.admin", _gen_key(), admin_caps)
        mon_keyring = os.path.join(self.dir, "mon-mkfs.keyring")
        self._write(mon_keyring,
                    _keyring_section("mon.", _gen_key(), {"mon": "allow *"}) + admin)
        self._write(self.keyring, admin)

        # mon.a
        monmap = os.path.join(self.dir, "monmap")
        self._tool("monmaptool", "--create", "--fsid", self.fsid,
                   "--addv", self.MON_ID, self.mon_host, monmap)
        self._tool("ceph-mon", "-c", self.conf, "--mkfs", "-i", self.MON_ID,
                   "--monmap", monmap, "--keyring", mon_keyring)
        self._spawn(f"mon.{self.MON_ID}", "ceph-mon", "-f", "-c", self.conf, "-i", self.MON_ID)
        self._wait_mon()
        # bounded librados calls for the fixture's own connection (the default is to wait forever)
        self._admin = self._connect("admin", self.keyring, timeout=START_TIMEOUT,
                                    conf={"rados_mon_op_timeout": str(int(START_TIMEOUT)),
                                          "rados_osd_op_timeout": str(int(START_TIMEOUT))})

        # osd.0: the mon assigns the id and stores the key; the OSD's keyring we write ourselves
        # (ceph-osd --mkfs does not, and the OSD needs it to fetch its config from the mon).
        osd_uuid, osd_key = str(uuid.uuid4()), _gen_key()
        out = self.mon_command({"prefix": "osd new", "uuid": osd_uuid, "format": "json"},
                               inbuf=json.dumps({"cephx_secret": osd_key}))
        osd_id = json.loads(out)["osdid"]
        if osd_id != self.OSD_ID:
            raise CephClusterError(f"osd new gave id {osd_id}, expected {self.OSD_ID}")
        osd_dir = os.path.join(self.dir, f"osd.{osd_id}")
        self._write(os.path.join(osd_dir, "keyring"),
                    _keyring_section(f"osd.{osd_id}", osd_key, {}))
        self._tool("ceph-osd", "-c", self.conf, "-i", str(osd_id), "--mkfs",
                   "--osd-uuid", osd_uuid)
        with open(os.path.join(osd_dir, "type")) as f:  # an unknown store becomes bluestore
            store = f.read().strip()
        if store != "memstore":
            raise CephClusterError(f"osd.{osd_id} was made with objectstore {store!r}")
        self._spawn(f"osd.{osd_id}", "ceph-osd", "-f", "-c", self.conf, "-i", str(osd_id))
        self._wait_osd_up(osd_id)

        if self.pool:
            self._admin.create_pool(self.pool)
            with self._admin.open_ioctx(self.pool) as io:
                rbd.RBD().pool_init(io, False)  # returns once the pool's PGs take writes

    def _write_conf(self):
        d = self.dir
        glob = {
            "fsid": self.fsid,
            "mon host": self.mon_host,
            "public addr": "127.0.0.1",
            "cluster addr": "127.0.0.1",
            "public network": "127.0.0.1/32",
            "ms bind ipv6": "false",
            "ms bind port min": str(OSD_PORT_MIN),
            "ms bind port max": str(OSD_PORT_MAX),
            "auth cluster required": "cephx",
            "auth service required": "cephx",
            "auth client required": "cephx",
            "auth allow insecure global id reclaim": "false",
            # nothing outside the temp dir: no /var/run/ceph, /var/log/ceph, /var/lib/ceph
            "run dir": f"{d}/run",
            "pid file": f"{d}/run/$name.pid",
            "crash dir": f"{d}/crash",
            "mon cluster log file": f"{d}/log/cluster.log",
            # one replica, few PGs, no mgr
            "osd pool default size": "1",
            "osd pool default min size": "1",
            "mon allow pool size one": "true",
            "mon allow pool delete": "true",
            "osd crush chooseleaf type": "0",
            "osd pool default pg num": "8",
            "osd pool default pgp num": "8",
            "osd pool default pg autoscale mode": "off",
            "mon warn on pool no redundancy": "false",
            "mon mgr mkfs grace": "86400",
            # a 1 s propose interval makes start take ~9 s
            "paxos propose interval": "0.1",
            # a nearly full /tmp should not make the mon shut itself down mid-test
            "mon data avail warn": "2",
            "mon data avail crit": "1",
        }
        glob.update({k.replace("_", " "): str(v) for k, v in self.extra_conf.items()})
        sections = {
            "global": glob,
            "mon": {
                "mon data": f"{d}/mon.$id",
                "keyring": "$mon_data/keyring",
                "log file": f"{d}/log/$name.log",
                # a port taken meanwhile: exit at once (start() retries with new ports)
                # instead of retrying the bind 3 times 5 s apart
                "ms bind retry count": "1",
                "ms bind retry delay": "0",
                # keeps RocksDB's multi-line stats tables out of the log tails in errors
                "debug rocksdb": "0/5",
            },
            "osd": {
                "osd data": f"{d}/osd.$id",
                "keyring": "$osd_data/keyring",
                "osd objectstore": "memstore",
                "memstore device bytes": str(self.memstore_bytes),
                "log file": f"{d}/log/$name.log",
            },
            "client": {"keyring": self.keyring},
        }
        text = "".join(f"[{s}]\n" + "".join(f"\t{k} = {v}\n" for k, v in opts.items()) + "\n"
                       for s, opts in sections.items())
        self._write(self.conf, text)

    @staticmethod
    def _write(path, text):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _tool(self, *cmd):
        try:
            p = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=TOOL_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise self._error(f"{' '.join(cmd)} timed out after {TOOL_TIMEOUT:.0f} s") from e
        if p.returncode != 0:
            raise self._error(f"{' '.join(cmd)} exited {p.returncode}\n"
                              f"stdout: {p.stdout.strip()}\nstderr: {p.stderr.strip()}")
        return p.stdout

    def _spawn(self, name, *cmd):
        # setpriv --pdeathsig: the daemon gets SIGKILL when the thread that forked it exits,
        # so only from the main thread (its exit is the process's exit).
        prefix = ["setpriv", "--pdeathsig", "KILL", "--"] if _in_main_thread() else []
        out = open(os.path.join(self.dir, "log", f"{name}.stderr"), "wb")
        try:
            self._procs[name] = subprocess.Popen(
                prefix + list(cmd), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=self.dir)
        finally:
            out.close()

    def _check_alive(self, name):
        p = self._procs[name]
        if p.poll() is not None:
            err = self._error(f"{name} exited with status {p.returncode} during start")
            if name.startswith("mon.") and any(
                    "Address already in use" in line for line in err.args[0].splitlines()):
                raise _PortTaken(err.args[0])
            raise err

    def _wait_mon(self):
        """Until mon.a accepts connections on both ports (a cheap TCP poll, no CLI)."""
        name = f"mon.{self.MON_ID}"
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.mon_port, self.mon_port + 1):
            while True:
                self._check_alive(name)
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise self._error(f"{name} did not listen on 127.0.0.1:{port} within "
                                      f"{START_TIMEOUT:.0f} s")
                time.sleep(0.02)

    def _wait_osd_up(self, osd_id):
        name = f"osd.{osd_id}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self._check_alive(name)
            dump = json.loads(self.mon_command({"prefix": "osd dump", "format": "json"}))
            osd = next((o for o in dump["osds"] if o["osd"] == osd_id), None)
            if osd and osd["up"] == 1 and osd["in"] == 1:
                return
            if time.monotonic() > deadline:
                raise self._error(f"{name} not up and in within {START_TIMEOUT:.0f} s "
                                  f"(osd dump: {osd})")
            time.sleep(0.05)

    def _connect(self, user, keyring, timeout=30, conf=None):
        opts = dict(conf or {})
        if keyring:
            opts["keyring"] = keyring
        r = rados.Rados(rados_id=user, conffile=self.conf, conf=opts or None)
        try:
            r.connect(timeout=int(timeout))
        except Exception:
            r.shutdown()
            raise
        return r

    def _error(self, msg):
        return CephClusterError(f"{msg}\n(cluster dir {self.dir}, removed after a failed start)\n"
                                f"{self.log_tail()}")

    def log_tail(self, lines=30):
        """The last `lines` lines of each daemon's log and stderr (empty if none)."""
        if not self.dir or not os.path.isdir(os.path.join(self.dir, "log")):
            return ""
        logdir = os.path.join(self.dir, "log")
        parts = []
        for fn in sorted(os.listdir(logdir)):
            if fn == "cluster.log":
                continue
            tail = _tail(os.path.join(logdir, fn), lines)
            if tail:
                parts.append(f"--- tail of {fn} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    # ---- stop ------------------------------------------------------------------------------

    def stop(self):
        """Stops osd.0, then mon.a, and removes the temp dir. Idempotent."""
        with self._lock:
            if not self.running and not self._procs:
                return
            t0 = time.monotonic()
            self._teardown()
            self.stop_seconds = time.monotonic() - t0
            _live.discard(self)

    def _teardown_quietly(self):
        try:
            self._teardown()
        except Exception:  # noqa: BLE001 - the start error matters more
            pass

    def _teardown(self):
        errors = []
        if self._admin is not None:
            admin, self._admin = self._admin, None
            # shutdown() of a client whose mon is gone can take long; don't wait for it forever
            t = threading.Thread(target=admin.shutdown, daemon=True)
            t.start()
            t.join(STOP_TIMEOUT)
        # OSD first: an OSD whose mon is gone waits 5 s before it exits, so if the mon died
        # already, the OSD (memstore: nothing on disk to keep consistent) gets SIGKILL at once
        mon_dead = any(p.poll() is not None for n, p in self._procs.items()
                       if n.startswith("mon."))
        for name in sorted(self._procs, key=lambda n: not n.startswith("osd.")):
            try:
                self._stop_proc(self._procs[name], kill=mon_dead and name.startswith("osd."))
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                errors.append(f"{name}: {e}")
        self._procs.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if errors:
            raise CephClusterError("stopping the cluster: " + "; ".join(errors))

    @staticmethod
    def _stop_proc(p, kill=False):
        if p.poll() is None and kill:
            p.kill()
        elif p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                p.kill()
        p.wait(STOP_TIMEOUT)

    # ---- helpers ---------------------------------------------------------------------------

    def _require(self):
        if not self.running or self._admin is None:
            raise CephClusterError("cluster is not running")

    def mon_command(self, cmd, inbuf=b""):
        """A mon command as client.admin through librados; returns the output (str)."""
        self._require()
        if isinstance(inbuf, str):
            inbuf = inbuf.encode()
        ret, out, status = self._admin.mon_command(json.dumps(cmd), inbuf, timeout=30)
        if ret != 0:
            raise CephClusterError(f"mon command {cmd} failed: {ret} "
                                   f"({os.strerror(-ret) if ret < 0 else ''}) {status}")
        return out.decode()

    def create_image(self, name, size, pool="rbd", features=None):
        """Creates image pool/name of `size` bytes (new format; default features if None)."""
        self._require()
        with self._admin.open_ioctx(pool) as io:
            rbd.RBD().create(io, name, size, old_format=False, features=features)
        return f"{pool}/{name}"

    def rados(self, user="admin", keyring=None, timeout=30, conf=None):
        """A connected rados.Rados as client.<user>; the caller calls shutdown().

        keyring: path of the user's keyring (default: the conf's, i.e. client.admin's).
        timeout: seconds to wait for the connection. conf: extra client options, e.g.
        {"rados_osd_op_timeout": "10"} (librados waits forever by default)."""
        self._require()
        return self._connect(user, keyring, timeout, conf)

    def add_user(self, name, caps):
        """Creates client.<name> with `caps` ({"mon": ..., "osd": ...}; {} = no access),
        writes its keyring file and returns the file's path."""
        self._require()
        flat = [x for kv in sorted(caps.items()) for x in kv]
        out = self.mon_command({"prefix": "auth get-or-create", "entity": f"client.{name}",
                                "caps": flat})
        path = os.path.join(self.dir, f"client.{name}.keyring")
        self._write(path, out)
        return path

    def ceph(self, *args, check=True, timeout=TOOL_TIMEOUT):
        """Runs `ceph -c conf --id admin args...`; returns stdout. For rare calls only."""
        self._require()
        p = subprocess.run(["ceph", "-c", self.conf, "--id", self.user, *map(str, args)],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise CephClusterError(f"ceph {' '.join(map(str, args))} exited {p.returncode}: "
                                   f"{p.stderr.strip()}")
        return p.stdout


if __name__ == "__main__":  # manual check: python3 ceph_cluster.py
    with CephCluster() as c:
        print(f"started in {c.start_seconds:.2f} s: {c.dir} mon port {c.mon_port} "
              f"pids {c.pids}")
        print(c.ceph("-s"))
    print(f"stopped in {c.stop_seconds:.2f} s")
