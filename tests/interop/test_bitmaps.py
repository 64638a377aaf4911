#!/usr/bin/python3
"""Interop: dirty bitmaps as backup tools use them. Bitmaps are added over
nbdctl, writes, trims and zeroes go through real clients, and the bitmap is
read back as the NBD meta context qemu:dirty-bitmap:NAME by nbdinfo --map,
qemu-img map (x-dirty-bitmap) and libnbd from Python; a checkpoint under a
write load; a whole incremental backup cycle; and what restarts do: a clean
stop keeps a file export's bitmap, SIGKILL makes it inconsistent (listed as
such and refused as a meta context until cleared), a file changed while
the daemon was stopped too."""
import json
import os
import random
import signal
import subprocess
import threading
import unittest

import nbd

from nbdmgr_fixture import Daemon, run, scrape_metrics, sha256

KiB = 1 << 10
MiB = 1 << 20
SIZE = 64 * MiB
G = 64 * KiB  # the default granularity


def clusters(ranges, granularity=G):
    """The set of granularity blocks the (offset, length) ranges touch."""
    out = set()
    for off, length in ranges:
        out.update(range(off // granularity, (off + length - 1) // granularity + 1))
    return out


def dirty_runs(uri, bitmap, size=SIZE):
    """The dirty runs (offset, length) of `bitmap`, read with libnbd as a
    backup tool does: BLOCK_STATUS over the whole export."""
    ctx = "qemu:dirty-bitmap:" + bitmap
    h = nbd.NBD()
    h.add_meta_context(ctx)
    h.connect_uri(uri)
    try:
        if not h.can_meta_context(ctx):
            raise LookupError(f"{ctx} not offered")
        runs, pos = [], [0]

        def cb(metacontext, offset, entries, err):
            if metacontext != ctx:
                return 0
            at = offset
            for i in range(0, len(entries), 2):
                length, flags = entries[i], entries[i + 1]
                if flags & 1:
                    if runs and runs[-1][0] + runs[-1][1] == at:
                        runs[-1] = (runs[-1][0], runs[-1][1] + length)
                    else:
                        runs.append((at, length))
                at += length
            pos[0] = at
            return 0
        while pos[0] < size:
            start = pos[0]
            h.block_status(min(size - start, 1 << 30), start, cb)
            if pos[0] <= start:
                raise AssertionError("BLOCK_STATUS made no progress")
        return runs
    finally:
        h.shutdown()


def dirty_clusters(uri, bitmap, granularity=G):
    return clusters(dirty_runs(uri, bitmap), granularity)


class BitmapTest(unittest.TestCase):
    def setUp(self):
        self.d = Daemon([
            "name=disk,backend=file,path={0}/disk.img,size=64MiB",
            "name=mem,backend=memory,size=64MiB",
        ])
        self.d.args = [a.format(self.d.dir) for a in self.d.args]
        self.d.start()
        self.addCleanup(self.d.cleanup)

    def bitmaps(self, export):
        out = self.d.nbdctl("bitmap", "list", export, "-o", "json").stdout
        found = {}
        for b in json.loads(out).get("bitmaps", []):
            # Resource names ("exports/E/bitmaps/B"); 64-bit numbers come as
            # strings in protobuf's JSON.
            for k in ("granularity_bytes", "dirty_bytes", "memory_bytes"):
                b[k] = int(b.get(k, 0))
            found[b["name"].rsplit("/", 1)[1]] = b
        return found

    def connect(self, export):
        h = nbd.NBD()
        h.connect_uri(self.d.uri(export))
        return h

    def test_map_equals_exactly_the_written_clusters(self):
        self.d.nbdctl("bitmap", "add", "disk", "daily")
        self.d.nbdctl("bitmap", "add", "disk", "coarse", "--granularity", "1MiB")
        h = self.connect("disk")
        rng = random.Random(7)
        touched = []
        for _ in range(40):
            off = rng.randrange(0, SIZE - 300 * KiB) & ~511
            length = rng.choice([512, 4 * KiB, 64 * KiB, 65 * KiB, 200 * KiB])
            h.pwrite(os.urandom(length), off)
            touched.append((off, length))
        h.trim(128 * KiB, 10 * MiB)
        touched.append((10 * MiB, 128 * KiB))
        h.zero(8 * KiB, 50 * MiB + 1000 * 512)
        touched.append((50 * MiB + 1000 * 512, 8 * KiB))
        # A write that crosses a block boundary by one sector.
        h.pwrite(b"x" * 1024, 20 * MiB - 512)
        touched.append((20 * MiB - 512, 1024))
        h.shutdown()
        want = clusters(touched)
        self.assertEqual(dirty_clusters(self.d.uri("disk"), "daily"), want)
        self.assertEqual(dirty_clusters(self.d.uri("disk"), "coarse", MiB),
                         clusters(touched, MiB))

        # nbdinfo --map reads the same.
        out = run("nbdinfo", "--json", "--map=qemu:dirty-bitmap:daily",
                  self.d.uri("disk")).stdout
        got = set()
        for e in json.loads(out):
            if e["type"] & 1:
                got |= clusters([(e["offset"], e["length"])])
        self.assertEqual(got, want)

        # qemu-img map with x-dirty-bitmap reads the bitmap as allocation:
        # a dirty block comes back as a hole ("data": false).
        out = run("qemu-img", "map", "--output=json", "--image-opts",
                  f"driver=nbd,server.type=unix,server.path={self.d.sock},"
                  "export=disk,x-dirty-bitmap=qemu:dirty-bitmap:daily").stdout
        got = set()
        for e in json.loads(out):
            if not e["data"]:
                got |= clusters([(e["start"], e["length"])])
        self.assertEqual(got, want)

        info = self.bitmaps("disk")
        self.assertEqual(info["daily"]["dirty_bytes"], len(want) * G)
        self.assertEqual(info["daily"]["granularity_bytes"], G)
        metrics = scrape_metrics(self.d)
        self.assertEqual(
            metrics['nbdmgr_bitmap_dirty_bytes{export="disk",bitmap="daily"}'],
            len(want) * G)

        # LIST_META_CONTEXT names both bitmaps (nbdinfo --list shows them).
        out = run("nbdinfo", "--json", self.d.uri("disk")).stdout
        contexts = json.loads(out)["exports"][0]["contexts"]
        self.assertIn("qemu:dirty-bitmap:daily", contexts)
        self.assertIn("qemu:dirty-bitmap:coarse", contexts)

        # Reads mark nothing; clear empties it.
        h = self.connect("disk")
        h.pread(4 * MiB, 30 * MiB)
        h.shutdown()
        self.assertEqual(dirty_clusters(self.d.uri("disk"), "daily"), want)
        self.d.nbdctl("bitmap", "clear", "disk", "daily")
        self.assertEqual(dirty_clusters(self.d.uri("disk"), "daily"), set())

    def test_checkpoint_while_writing_loses_no_write(self):
        self.d.nbdctl("bitmap", "add", "mem", "e1")
        acked_before, sent_after, all_written = set(), set(), set()
        phase = {"calling": False, "checkpointed": False}
        stop = threading.Event()
        lock = threading.Lock()

        def writer(seed):
            rng = random.Random(seed)
            h = self.connect("mem")
            while not stop.is_set():
                block = rng.randrange(SIZE // G)
                with lock:
                    after = phase["checkpointed"]
                h.pwrite(b"w" * 4096, block * G)
                with lock:
                    all_written.add(block)
                    if not phase["calling"]:
                        acked_before.add(block)
                    if after:
                        sent_after.add(block)
            h.shutdown()
        threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        try:
            stop.wait(0.5)
            with lock:
                phase["calling"] = True
            self.d.nbdctl("bitmap", "checkpoint", "mem", "e1", "e2")
            with lock:
                phase["checkpointed"] = True
            stop.wait(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
        e1 = dirty_clusters(self.d.uri("mem"), "e1")
        e2 = dirty_clusters(self.d.uri("mem"), "e2")
        self.assertTrue(acked_before and sent_after, "no writes on one side")
        # None lost, none invented; acknowledged before the call: in the
        # frozen epoch; sent after it returned: in the new one.
        self.assertEqual(e1 | e2, all_written)
        self.assertLessEqual(acked_before, e1)
        self.assertLessEqual(sent_after, e2)
        info = self.bitmaps("mem")
        self.assertFalse(info["e1"]["active"])
        self.assertTrue(info["e2"]["active"])
        # The frozen one no longer changes.
        h = self.connect("mem")
        h.pwrite(b"z" * 512, 0)
        h.shutdown()
        self.assertEqual(dirty_clusters(self.d.uri("mem"), "e1"), e1)
        self.assertIn(0, dirty_clusters(self.d.uri("mem"), "e2"))

    def copy_runs(self, export, runs, backup):
        """Copies the runs from the export into the backup file."""
        h = self.connect(export)
        with open(backup, "r+b") as f:
            for off, length in runs:
                pos = off
                while pos < off + length:
                    n = min(off + length - pos, 4 * MiB)
                    f.seek(pos)
                    f.write(h.pread(n, pos))
                    pos += n
        h.shutdown()

    def export_sha(self, export):
        dump = os.path.join(self.d.dir, "dump.img")
        run("nbdcopy", self.d.uri(export), dump)
        digest = sha256(dump)
        os.unlink(dump)
        return digest

    def test_incremental_backup_cycle(self):
        # Day 0: a bitmap, then a full copy.
        h = self.connect("disk")
        for i in range(0, SIZE, 8 * MiB):
            h.pwrite(os.urandom(MiB), i)
        h.shutdown()
        self.d.nbdctl("bitmap", "add", "disk", "b0")
        backup = os.path.join(self.d.dir, "backup.img")
        run("nbdcopy", self.d.uri("disk"), backup)
        copied = []
        for day in range(1, 4):
            rng = random.Random(day)
            h = self.connect("disk")
            for _ in range(30):
                off = rng.randrange(0, SIZE - MiB) & ~4095
                h.pwrite(os.urandom(rng.choice([4096, 100 * KiB, MiB])), off)
            h.zero(256 * KiB, rng.randrange(0, SIZE - MiB) & ~4095)
            h.trim(128 * KiB, rng.randrange(0, SIZE - MiB) & ~4095)
            h.shutdown()
            # Freeze what changed, start the next epoch, copy only that.
            self.d.nbdctl("bitmap", "checkpoint", "disk", f"b{day - 1}", f"b{day}")
            runs = dirty_runs(self.d.uri("disk"), f"b{day - 1}")
            self.copy_runs("disk", runs, backup)
            copied.append(sum(n for _, n in runs))
            self.d.nbdctl("bitmap", "remove", "disk", f"b{day - 1}")
            self.assertEqual(sha256(backup), self.export_sha("disk"), f"day {day}")
        # Incremental means less than everything.
        self.assertTrue(all(0 < c < SIZE // 2 for c in copied), copied)

    def test_clean_restart_keeps_sigkill_makes_inconsistent(self):
        self.d.nbdctl("bitmap", "add", "disk", "daily")
        self.d.nbdctl("bitmap", "add", "mem", "daily")
        h = self.connect("disk")
        h.pwrite(b"a" * 4096, 5 * MiB)
        h.flush()
        h.shutdown()
        self.d.nbdctl("bitmap", "checkpoint", "disk", "daily", "next")
        h = self.connect("disk")
        h.pwrite(b"b" * 4096, 7 * MiB)
        h.shutdown()
        self.assertEqual(self.d.stop(), 0)
        self.d.start()
        info = self.bitmaps("disk")
        self.assertTrue(info["daily"]["consistent"], info)
        self.assertFalse(info["daily"]["active"])
        self.assertTrue(info["next"]["active"])
        self.assertEqual(dirty_clusters(self.d.uri("disk"), "daily"), {5 * MiB // G})
        self.assertEqual(dirty_clusters(self.d.uri("disk"), "next"), {7 * MiB // G})
        # A memory export's data did not survive, nor can its bitmap.
        mem = self.bitmaps("mem")["daily"]
        self.assertFalse(mem["consistent"])
        self.assertIn("not kept", mem["inconsistent_reason"])

        # Writes after the restart are recorded; then SIGKILL.
        h = self.connect("disk")
        h.pwrite(b"c" * 4096, 9 * MiB)
        h.flush()
        h.shutdown()
        self.d.stop(signal.SIGKILL)
        self.d.start()
        info = self.bitmaps("disk")
        for name in ("daily", "next"):
            self.assertFalse(info[name]["consistent"], info)
            self.assertIn("did not stop cleanly", info[name]["inconsistent_reason"])
        with self.assertRaises(LookupError):
            dirty_runs(self.d.uri("disk"), "next")
        p = run("nbdinfo", "--map=qemu:dirty-bitmap:next", self.d.uri("disk"),
                check=False)
        self.assertNotEqual(p.returncode, 0)
        metrics = scrape_metrics(self.d)
        self.assertEqual(
            metrics['nbdmgr_bitmap_consistent{export="disk",bitmap="next"}'], 0)
        # Still recording while inconsistent? Clear makes it a fresh start.
        self.d.nbdctl("bitmap", "clear", "disk", "next")
        h = self.connect("disk")
        h.pwrite(b"d" * 4096, 11 * MiB)
        h.shutdown()
        self.assertEqual(dirty_clusters(self.d.uri("disk"), "next"), {11 * MiB // G})

    def test_file_changed_while_stopped_is_inconsistent(self):
        self.d.nbdctl("bitmap", "add", "disk", "daily")
        self.assertEqual(self.d.stop(), 0)
        # Another tool writes the image while nbdmgrd is down.
        with open(os.path.join(self.d.dir, "disk.img"), "r+b") as f:
            f.seek(3 * MiB)
            f.write(b"outside")
        self.d.start()
        info = self.bitmaps("disk")["daily"]
        self.assertFalse(info["consistent"])
        self.assertIn("changed", info["inconsistent_reason"])

    def test_corrupt_bitmap_file_is_set_aside_and_daemon_serves(self):
        self.d.nbdctl("bitmap", "add", "disk", "daily")
        self.assertEqual(self.d.stop(), 0)
        path = os.path.join(self.d.state_dir, "bitmaps", "disk.bitmaps")
        with open(path, "r+b") as f:
            f.seek(20)
            f.write(b"\xff\xff")
        self.d.start()
        self.assertEqual(self.bitmaps("disk"), {})
        self.assertTrue(os.path.exists(path + ".corrupt"))
        self.assertIn("cannot be read", self.d.logs())
        h = self.connect("disk")
        h.pwrite(b"ok", 0)
        h.shutdown()


if __name__ == "__main__":
    unittest.main()
