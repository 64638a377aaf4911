#!/usr/bin/python3
"""Interop: crash safety. Several clients write to a file-backed export with
FUA and with FLUSH; nbdmgrd is killed with SIGKILL mid-load and restarted;
every write acknowledged as durable must read back intact, and the exports
created over the API must all come back. Ten rounds in a row."""
import json
import os
import random
import signal
import sys
import threading
import time
import unittest

import nbd

from nbdmgr_fixture import Daemon

MiB = 1 << 20
BLOCK = 4096
CLIENTS = 4
ROUNDS = 10
SIZE = 64 * MiB
# Each (round, client) owns its own blocks, so no write is ever ambiguous.
PER_SLOT = SIZE // BLOCK // (ROUNDS * CLIENTS)


def block_data(round_no, client, seq):
    head = f"r{round_no} c{client} s{seq} ".encode()
    return (head * (BLOCK // len(head) + 1))[:BLOCK]


class Writer(threading.Thread):
    """Writes its blocks until the daemon dies: odd ones with FUA, even ones
    plainly followed now and then by a FLUSH. Records what was durable."""

    def __init__(self, uri, round_no, client):
        super().__init__(daemon=True)
        self.uri, self.round_no, self.client = uri, round_no, client
        self.durable = {}  # offset -> bytes
        self.acked = 0

    def run(self):
        h = nbd.NBD()
        try:
            h.connect_uri(self.uri)
            pending = {}
            first = (self.round_no * CLIENTS + self.client) * PER_SLOT
            for seq in range(PER_SLOT):
                off = (first + seq) * BLOCK
                data = block_data(self.round_no, self.client, seq)
                if seq % 2:
                    h.pwrite(data, off, nbd.CMD_FLAG_FUA)
                    self.durable[off] = data
                else:
                    h.pwrite(data, off)
                    pending[off] = data
                    if seq % 8 == 0:
                        h.flush()
                        self.durable.update(pending)
                        pending.clear()
                self.acked += 1
        except nbd.Error:
            pass  # the daemon was killed
        finally:
            del h  # closes the connection


class CrashSafetyTest(unittest.TestCase):
    def test_acknowledged_writes_survive_sigkill(self):
        d = Daemon([])
        disks = os.path.join(d.dir, "disks")
        os.makedirs(disks)
        d.args += ["--allow-path", disks]
        d.start()
        img = os.path.join(disks, "disk.img")
        d.nbdctl("create", "disk", "--file", img, "--size", str(SIZE))
        durable = {}
        created = ["disk"]
        rng = random.Random(1234)
        for round_no in range(ROUNDS):
            writers = [Writer(d.uri("disk"), round_no, c) for c in range(CLIENTS)]
            for w in writers:
                w.start()
            # Change the export set while clients write.
            name = f"extra{round_no}"
            d.nbdctl("create", name, "--memory", "1MiB")
            created.append(name)
            time.sleep(rng.uniform(0.3, 1.0))
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            d.log.close()
            for w in writers:
                w.join(timeout=30)
                durable.update(w.durable)
            self.assertGreater(sum(w.acked for w in writers), 0,
                               f"round {round_no}: no write got through:\n{d.logs()}")

            d.start()
            listed = [e["name"] for e in
                      json.loads(d.nbdctl("-o", "json", "list").stdout)["exports"]]
            self.assertEqual(sorted(listed), sorted(f"exports/{n}" for n in created),
                             f"round {round_no}")
            h = nbd.NBD()
            h.connect_uri(d.uri("disk"))
            bad = [off for off, data in sorted(durable.items())
                   if h.pread(BLOCK, off) != data]
            h.shutdown()
            self.assertEqual(bad, [], f"round {round_no}: {len(bad)} of "
                             f"{len(durable)} durable blocks lost or torn")
        self.assertGreater(len(durable), ROUNDS)
        print(f"\n{len(durable)} durable blocks verified across {ROUNDS} SIGKILLs",
              file=sys.stderr)
        d.stop()


if __name__ == "__main__":
    unittest.main()
