#!/usr/bin/python3
"""Interop: copy-on-write overlays served to real clients. Twenty overlays
on one base, each written at its own offsets through libnbd, compared byte
for byte with a model (the base plus that overlay's writes) by qemu-img
compare; the base is served read-only and unchanged; trim and zero in an
overlay read zero, not the base; many overlays read in full do not cost a
copy of the base each; and SIGKILL during a write load on an overlay:
after the restart every write acknowledged as durable (FUA, or before a
FLUSH) reads back, and every other block reads either the base or one of
the writes made to it, never anything else."""
import os
import random
import signal
import threading
import time
import unittest

import nbd

from nbdmgr_fixture import Daemon, run, scrape_metrics

KiB = 1 << 10
MiB = 1 << 20
SIZE = 16 * MiB
OVERLAYS = 20


def pattern(seed, length):
    r = random.Random(seed)
    return r.randbytes(length)


class OverlayTest(unittest.TestCase):
    def start(self, overlays, base_size=SIZE, extra_base="", cluster=""):
        self.d = Daemon([f"name=golden,backend=file,path={{0}}/golden.img,"
                         f"size={base_size}{extra_base}"] +
                        [f"name={o},backend=file,path={{0}}/{o}.ovl,base=golden{cluster}"
                         for o in overlays])
        self.d.args = [a.format(self.d.dir) for a in self.d.args]
        self.base_img = os.path.join(self.d.dir, "golden.img")
        # The golden image exists before the daemon starts (a prepared one).
        with open(self.base_img, "wb") as f:
            f.write(pattern("golden", base_size))
        self.d.start()
        self.addCleanup(self.d.cleanup)

    def connect(self, export):
        h = nbd.NBD()
        h.connect_uri(self.d.uri(export))
        return h

    def compare(self, model, export):
        p = run("qemu-img", "compare", "-f", "raw", "-F", "raw", model,
                self.d.uri(export), check=False)
        self.assertEqual(p.returncode, 0, f"{export}: {p.stdout}{p.stderr}")

    def test_twenty_overlays_each_see_base_plus_own_writes(self):
        names = [f"vm{i}" for i in range(OVERLAYS)]
        self.start(names)
        golden = pattern("golden", SIZE)
        models = {}
        for i, name in enumerate(names):
            rng = random.Random(i)
            model = bytearray(golden)
            h = self.connect(name)
            for _ in range(12):
                off = rng.randrange(0, SIZE - 256 * KiB)
                data = rng.randbytes(rng.choice([512, 4 * KiB, 70 * KiB, 256 * KiB]))
                h.pwrite(data, off)
                model[off:off + len(data)] = data
            h.flush()
            h.shutdown()
            path = os.path.join(self.d.dir, f"{name}.model")
            with open(path, "wb") as f:
                f.write(model)
            models[name] = path
        for name in names:
            self.compare(models[name], name)
        # The base is untouched, served read-only, and reads as it was.
        with open(self.base_img, "rb") as f:
            self.assertEqual(f.read(), golden)
        h = self.connect("golden")
        self.assertTrue(h.is_read_only())
        with self.assertRaises(nbd.Error):
            h.pwrite(b"x" * 512, 0)
        h.shutdown()
        # Each overlay holds only what it wrote.
        metrics = scrape_metrics(self.d)
        for name in names:
            held = metrics[f'nbdmgr_overlay_allocated_bytes{{export="{name}",state="data"}}']
            self.assertGreater(held, 0)
            self.assertLess(held, 12 * (256 + 128) * KiB)

    def test_trim_and_zero_hide_the_base(self):
        self.start(["vm"])
        h = self.connect("vm")
        h.trim(256 * KiB, 1 * MiB)            # whole clusters
        h.zero(10 * KiB, 3 * MiB + 5 * KiB)   # partial clusters
        h.zero(64 * KiB, 5 * MiB, nbd.CMD_FLAG_NO_HOLE)
        self.assertEqual(h.pread(256 * KiB, 1 * MiB), bytes(256 * KiB))
        self.assertEqual(h.pread(10 * KiB, 3 * MiB + 5 * KiB), bytes(10 * KiB))
        self.assertEqual(h.pread(64 * KiB, 5 * MiB), bytes(64 * KiB))
        golden = pattern("golden", SIZE)
        # Next to them, the base still shows.
        self.assertEqual(h.pread(4 * KiB, 3 * MiB + 15 * KiB),
                         golden[3 * MiB + 15 * KiB:3 * MiB + 19 * KiB])
        h.shutdown()
        # BLOCK_STATUS: the trimmed clusters are holes that read zero; the
        # zeroed-with-NO_HOLE ones allocated; the untouched ones the base's.
        out = run("nbdinfo", "--map", self.d.uri("vm")).stdout
        rows = [[int(x) for x in line.split()[:3]] for line in out.splitlines()]

        def flags_at(offset):
            for start, length, flags in rows:
                if start <= offset < start + length:
                    return flags
            self.fail(f"{offset} not mapped: {out}")
        self.assertEqual(flags_at(1 * MiB), 3, out)       # the trim: hole,zero
        # NO_HOLE: allocated; known zero (2) where the file system lists
        # the overlay file's zeroed clusters as unwritten extents (ext4, XFS).
        self.assertIn(flags_at(5 * MiB), (0, 2), out)
        self.assertEqual(flags_at(12 * MiB), 0, out)      # the base's data

    def test_many_overlays_share_one_base(self):
        names = [f"o{i}" for i in range(50)]
        self.start(names, base_size=32 * MiB)
        rss0 = scrape_metrics(self.d)["process_resident_memory_bytes"]
        for name in names:
            run("nbdcopy", self.d.uri(name), "null:")
        rss1 = scrape_metrics(self.d)["process_resident_memory_bytes"]
        # 50 full reads of a 32 MiB base: not a copy of it per overlay (that
        # would be 1.6 GiB); the page cache holds the base once, outside us.
        self.assertLess(rss1 - rss0, 64 * MiB, (rss0, rss1))

    def test_sigkill_during_writes_keeps_every_durable_write(self):
        self.start(["vm"], cluster=",cluster-size=64KiB")
        golden = pattern("golden", SIZE)
        block = 4 * KiB
        blocks = SIZE // block
        lock = threading.Lock()
        writes = {}   # block -> every payload sent to it, in order
        durable = {}  # block -> index in writes[block] known durable
        stop = threading.Event()

        def writer(seed):
            # Each writer owns the blocks b % 3 == seed: per block, writes
            # are in order.
            rng = random.Random(seed)
            h = self.connect("vm")
            pending = []
            try:
                seq = 0
                while not stop.is_set():
                    b = rng.randrange(blocks // 3) * 3 + seed
                    data = (f"w{seed}-{seq} ".encode() * block)[:block]
                    seq += 1
                    fua = rng.random() < 0.3
                    with lock:
                        writes.setdefault(b, []).append(data)
                        index = len(writes[b]) - 1
                    h.pwrite(data, b * block, nbd.CMD_FLAG_FUA if fua else 0)
                    pending.append((b, index))
                    if fua or len(pending) >= 16:
                        if not fua:
                            h.flush()
                        with lock:
                            for pb, pi in pending:
                                durable[pb] = max(durable.get(pb, -1), pi)
                        pending = []
            except nbd.Error:
                pass  # the daemon died under us

        threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        self.d.stop(signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join()
        self.assertGreater(len(durable), 50)
        self.d.start()
        h = self.connect("vm")
        got = h.pread(SIZE, 0)
        h.shutdown()
        for b in range(blocks):
            have = bytes(got[b * block:(b + 1) * block])
            sent = writes.get(b, [])
            if b in durable:
                # The durable write or one sent after it: never older.
                self.assertIn(have, sent[durable[b]:], f"block {b}: durable write lost")
            else:
                allowed = sent + [golden[b * block:(b + 1) * block]]
                self.assertIn(have, allowed, f"block {b}: neither base nor a write")


if __name__ == "__main__":
    unittest.main()
