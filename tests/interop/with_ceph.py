#!/usr/bin/python3
"""Runs a command against a throwaway Ceph cluster: python3 with_ceph.py -- CMD ARGS...

Starts a CephCluster (ceph_cluster.py: 1 mon, 1 memstore OSD on 127.0.0.1, pool `rbd`),
runs CMD with these variables added to its environment:

  NBDMGR_CEPH_CONF     the cluster's ceph.conf (its [client] keyring is client.admin's)
  NBDMGR_CEPH_USER     "admin"
  NBDMGR_CEPH_KEYRING  the client.admin keyring
  NBDMGR_CEPH_DIR      the cluster's temp dir (removed when the cluster stops)

then stops the cluster and exits with CMD's exit status (128+N if a signal N ended it). If the
cluster cannot start, prints why and exits 125 without running CMD.

The cluster is always stopped: SIGINT, SIGTERM and SIGHUP are passed on to CMD (a second one
kills it), and the cluster stops once CMD has exited; a signal during start stops what was
started. CMD runs with a parent-death signal (SIGKILL), like the cluster's daemons, so even a
SIGKILL of this script (a ctest timeout) leaves neither CMD nor the daemons behind.
"""
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ceph_cluster import CephCluster  # noqa: E402

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
START_FAILED = 125


class _Interrupted(BaseException):
    """A signal arrived before CMD started: unwinds start(), which stops what it started."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def main(argv):
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    if not argv:
        print("usage: with_ceph.py -- CMD [ARGS...]", file=sys.stderr)
        return 2

    child = None
    signalled = []

    def on_signal(signum, _frame):
        signalled.append(signum)
        if child is None:
            raise _Interrupted(signum)
        try:
            child.send_signal(signal.SIGKILL if len(signalled) > 1 else signum)
        except ProcessLookupError:
            pass

    for s in SIGNALS:
        signal.signal(s, on_signal)

    cluster = CephCluster()
    try:
        try:
            cluster.start()
            print(f"with_ceph: cluster up in {cluster.start_seconds:.2f} s ({cluster.dir})",
                  file=sys.stderr, flush=True)
            env = dict(os.environ, NBDMGR_CEPH_CONF=cluster.conf, NBDMGR_CEPH_USER=cluster.user,
                       NBDMGR_CEPH_KEYRING=cluster.keyring, NBDMGR_CEPH_DIR=cluster.dir)
            child = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", *argv], env=env)
        except _Interrupted as e:
            return 128 + e.signum
        except OSError as e:
            print(f"with_ceph: cannot run {argv[0]}: {e}", file=sys.stderr)
            return 127
        except Exception as e:  # noqa: BLE001 - report any start failure, run nothing
            print(f"with_ceph: the Ceph cluster did not start: {e}", file=sys.stderr)
            return START_FAILED
        rc = child.wait()
        return 128 - rc if rc < 0 else rc
    finally:
        for s in SIGNALS:  # stopping is not interrupted
            signal.signal(s, signal.SIG_IGN)
        cluster.stop()
        if cluster.stop_seconds is not None:
            print(f"with_ceph: cluster stopped in {cluster.stop_seconds:.2f} s",
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
