#!/usr/bin/python3
"""Interop: NBD_CMD_CACHE and known zeroes in BLOCK_STATUS, with real
clients. Every backend advertises CACHE (nbdinfo --can cache, --json) and
answers it (libnbd's cache()); one past the end or above the maximum block
size gets EINVAL and the connection stays usable; on a file export a CACHE
of a range evicted from the page cache brings it back (fincore). After
WRITE_ZEROES, nbdinfo --map shows hole,zero (3) without NO_HOLE, zero (2:
allocated) with it, and data (0) where data was written, also over zeroes
and before it reaches the disk."""
import errno
import json
import os
import subprocess
import time
import unittest

import nbd

from nbdmgr_fixture import Daemon, run

KiB = 1 << 10
MiB = 1 << 20
FILE_SIZE = 16 * MiB


def resident_bytes(path):
    """Bytes of `path` in the page cache, by util-linux fincore."""
    out = run("fincore", "--bytes", "--noheadings", "--output", "RES", path).stdout
    return int(out.split()[0])


def tells_unwritten_extents(path):
    """Whether `path`'s file system lists a NO_HOLE zero as allocated zeroes
    (ext4 and XFS: unwritten extents that SEEK_DATA skips, FIEMAP lists)."""
    fs = run("stat", "-f", "-c", "%T", path).stdout.strip()
    return fs in ("ext2/ext3", "xfs")


class CacheAndZeroesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon([
            "name=mem,backend=memory,size=16MiB",
            "name=null,backend=null,size=64MiB",
            f"name=file,backend=file,path={{0}}/file.img,size={FILE_SIZE}",
            "name=golden,backend=file,path={0}/golden.img,size=8MiB",
            "name=vm,backend=file,path={0}/vm.ovl,base=golden",
            "name=ro,backend=memory,size=8MiB,read-only=true",
        ])
        cls.d.args = [a.format(cls.d.dir) for a in cls.d.args]
        cls.file_img = os.path.join(cls.d.dir, "file.img")
        # The file export's image exists, with data, before the daemon starts.
        with open(cls.file_img, "wb") as f:
            f.write(os.urandom(FILE_SIZE))
        with open(os.path.join(cls.d.dir, "golden.img"), "wb") as f:
            f.write(os.urandom(8 * MiB))
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.finish()

    def connect(self, export, strict=True):
        h = nbd.NBD()
        if not strict:
            # Send what libnbd would refuse itself, to see the server's answer.
            h.set_strict_mode(0)
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_uri(self.d.uri(export))

        def shutdown():
            try:
                h.shutdown()
            except nbd.Error:
                pass
        self.addCleanup(shutdown)
        return h

    def map(self, export):
        """nbdinfo --map --json: [(offset, length, type)]."""
        out = run("nbdinfo", "--map", "--json", self.d.uri(export)).stdout
        return [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]

    def type_at(self, extents, offset):
        for start, length, kind in extents:
            if start <= offset < start + length:
                return kind
        self.fail(f"{offset} not mapped: {extents}")

    # --- CACHE ---

    def test_every_backend_advertises_cache(self):
        for name in ("mem", "null", "file", "vm", "golden", "ro"):
            p = run("nbdinfo", "--can", "cache", self.d.uri(name), check=False)
            self.assertEqual(p.returncode, 0, f"{name}: {p.stdout}{p.stderr}")
            info = json.loads(run("nbdinfo", "--json", self.d.uri(name)).stdout)
            export = info["exports"][0]
            self.assertIs(export["can_cache"], True, f"{name}: {export}")

    def test_cache_succeeds_and_past_the_end_is_einval(self):
        for name in ("mem", "null", "file", "vm", "ro"):
            with self.subTest(export=name):
                h = self.connect(name)
                self.assertTrue(h.can_cache())
                size = h.get_size()
                h.cache(1 * MiB, 0)
                h.cache(4 * KiB, size - 4 * KiB)
                h.cache(1, size - 1)
                raw = self.connect(name, strict=False)
                for count, offset in ((2, size - 1), (4 * KiB, size),
                                      (32 * MiB + 1, 0)):
                    with self.assertRaises(nbd.Error) as cm:
                        raw.cache(count, offset)
                    self.assertEqual(cm.exception.errnum, errno.EINVAL,
                                     f"{name}: cache({count}, {offset})")
                # The connection is still usable.
                self.assertEqual(len(raw.pread(4 * KiB, 0)), 4 * KiB)
                raw.cache(4 * KiB, 0)

    def test_cache_reads_an_evicted_file_range_into_the_page_cache(self):
        h = self.connect("file")
        h.flush()
        # Evict the whole file (clean after fsync, so DONTNEED drops it).
        fd = os.open(self.file_img, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        before = resident_bytes(self.file_img)
        self.assertLess(before, 4 * MiB, "eviction did not take")
        h.cache(8 * MiB, 4 * MiB)
        deadline = time.time() + 10
        while resident_bytes(self.file_img) < before + 8 * MiB - 64 * KiB:
            if time.time() > deadline:
                self.fail(f"CACHE brought {resident_bytes(self.file_img)} bytes "
                          f"in (had {before}), expected 8 MiB more")
            time.sleep(0.05)

    # --- Known zeroes ---

    def zero_and_map(self, export):
        """Data, then each kind of zeroing over parts of it; returns the map."""
        h = self.connect(export)
        h.pwrite(b"\xa5" * (4 * MiB), 0)
        # On disk first: ext4 may zero a range still being allocated by
        # writing zeroes (data, which is what it then reports) rather than
        # leaving unwritten extents.
        h.flush()
        # libnbd's order: (count, offset).
        h.zero(1 * MiB, 1 * MiB)                              # may punch
        h.zero(2 * MiB, 1 * MiB, flags=nbd.CMD_FLAG_NO_HOLE)  # allocated
        h.pwrite(b"\x5a" * (64 * KiB), 2 * MiB + 512 * KiB)  # data over it
        h.zero(1 * MiB, 5 * MiB)
        # Mapped before anything reads the zeroes: on ext4 a read caches
        # their pages, which SEEK_DATA then counts as data (never the other
        # way round).
        m = self.map(export)
        self.assertEqual(h.pread(1 * MiB, 1 * MiB), bytes(1 * MiB))
        self.assertEqual(h.pread(64 * KiB, 2 * MiB + 512 * KiB), b"\x5a" * (64 * KiB))
        return h, m

    def check_zero_map(self, export, allocated_zeroes):
        h, m = self.zero_and_map(export)
        self.assertEqual(self.type_at(m, 0), 0, m)                  # data
        self.assertEqual(self.type_at(m, 5 * MiB), 3, m)            # hole,zero
        self.assertEqual(self.type_at(m, 2 * MiB + 512 * KiB), 0, m)
        self.assertEqual(self.type_at(m, 2 * MiB + 576 * KiB - 1), 0, m)
        self.assertEqual(self.type_at(m, 3 * MiB), 0, m)            # untouched data
        for offset in (1 * MiB, 2 * MiB, 2 * MiB + 576 * KiB):
            if allocated_zeroes:
                self.assertEqual(self.type_at(m, offset), 2, f"{offset}: {m}")
            else:
                self.assertEqual(self.type_at(m, offset) & 2, 2, f"{offset}: {m}")
        # Whatever reads as zero says so; nothing said zero reads otherwise.
        for start, length, kind in m:
            if kind & 2:
                self.assertEqual(h.pread(length, start), bytes(length), (start, m))
        return h

    def test_memory_known_zeroes(self):
        self.check_zero_map("mem", allocated_zeroes=True)

    def test_file_known_zeroes(self):
        h = self.check_zero_map("file", tells_unwritten_extents(self.file_img))
        # Written over allocated zeroes and not yet on disk: data.
        h.zero(2 * MiB, 8 * MiB, flags=nbd.CMD_FLAG_NO_HOLE)
        h.flush()
        h.pwrite(b"\x11" * (4 * KiB), 9 * MiB)
        m = self.map("file")
        self.assertEqual(self.type_at(m, 9 * MiB), 0, m)
        self.assertEqual(self.type_at(m, 9 * MiB + 4 * KiB - 1), 0, m)
        self.assertEqual(self.type_at(m, 8 * MiB) & 2, 2, m)
        h.flush()
        self.assertEqual(self.type_at(self.map("file"), 9 * MiB), 0)

    def test_overlay_known_zeroes(self):
        h = self.connect("vm")
        h.zero(1 * MiB, 1 * MiB, flags=nbd.CMD_FLAG_NO_HOLE)   # whole clusters
        h.zero(1 * MiB, 3 * MiB)
        h.pwrite(b"\x77" * 512, 1 * MiB + 100 * KiB)
        m = self.map("vm")
        self.assertEqual(self.type_at(m, 0), 0, m)                  # the base
        self.assertEqual(self.type_at(m, 3 * MiB), 3, m)            # zero clusters
        self.assertEqual(self.type_at(m, 1 * MiB + 100 * KiB), 0, m)
        if tells_unwritten_extents(self.d.dir):
            self.assertEqual(self.type_at(m, 1 * MiB), 2, m)        # allocated
        else:
            self.assertEqual(self.type_at(m, 1 * MiB) & 1, 0, m)    # the overlay's
        for start, length, kind in m:
            if kind & 2:
                self.assertEqual(h.pread(length, start), bytes(length), (start, m))


if __name__ == "__main__":
    unittest.main()
