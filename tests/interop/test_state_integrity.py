#!/usr/bin/python3
"""Interop: the state directory's integrity, as an operator sees it.

The real nbdmgrd creates exports over the API (nbdctl), is stopped, its state
files are damaged the way disks, crashes and people damage them, and it is
started again. A corrupt log record that is not a crash's torn tail, a
snapshot that is a directory or empty, a second daemon on the same state
directory and a state directory others can write to all stop it with exit
code 1 and a message naming the file (and the record's offset), and the files
are left byte for byte as they were. A shared directory's mode is never
changed, and a symlink planted at a temporary file's path is not followed.
"""
import json
import os
import stat
import struct
import subprocess
import unittest

from nbdmgr_fixture import Daemon, run

SNAPSHOT = "exports.textproto"
LOG = "exports.log"


def record_offsets(log):
    """Byte offsets of the records of a state log, then where the next goes."""
    out, pos = [], 16
    while pos + 8 <= len(log):
        (length,) = struct.unpack_from("<I", log, pos)
        if length == 0:
            break
        out.append(pos)
        pos += 8 + length
    return out + [pos]


class StateIntegrityTest(unittest.TestCase):
    def setUp(self):
        self.d = Daemon(["name=m,backend=memory,size=1MiB"])
        self.addCleanup(self.d.cleanup)

    def path(self, name):
        return os.path.join(self.d.state_dir, name)

    def read(self, name):
        with open(self.path(name), "rb") as f:
            return f.read()

    def write(self, name, data):
        with open(self.path(name), "wb") as f:
            f.write(data)

    def listed(self, d=None):
        out = (d or self.d).nbdctl("-o", "json", "list").stdout
        return sorted(e["name"].split("/", 1)[1] for e in json.loads(out)["exports"]
                      if e.get("persistent"))

    def saved(self, *names):
        """Starts the daemon, creates `names` over the API, stops it."""
        self.d.start()
        for n in names:
            self.d.nbdctl("create", n, "--memory", "1MiB")
        code = self.d.stop()
        if code != 0:
            self.fail(f"nbdmgrd exited {code}:\n{self.d.logs()}")

    def refused(self, args=None):
        """Starts nbdmgrd expecting it to refuse: its exit code and output."""
        p = subprocess.run(args or self.d.args, capture_output=True, text=True,
                           timeout=30)
        return p.returncode, p.stdout + p.stderr

    def state_files(self):
        return {n: self.read(n) for n in (SNAPSHOT, LOG)}

    def test_flipped_bit_in_a_middle_log_record_stops_the_daemon(self):
        self.saved("a", "b", "c", "d")  # "a" in the snapshot, b c d logged
        log = self.read(LOG)
        at = record_offsets(log)
        self.assertEqual(len(at), 4, at)
        bad = bytearray(log)
        bad[at[1] + 20] ^= 0x10  # in c's payload; d follows
        self.write(LOG, bytes(bad))
        before = self.state_files()
        code, out = self.refused()
        self.assertEqual(code, 1, out)
        self.assertIn(self.path(LOG), out)
        self.assertIn(f"corrupt record at byte {at[1]}", out)
        self.assertIn("left untouched", out)
        self.assertEqual(self.state_files(), before)
        # Nothing was lost: with the bit restored, every export is back.
        self.write(LOG, log)
        self.d.start()
        self.assertEqual(self.listed(), ["a", "b", "c", "d"])

    def test_flipped_bit_in_a_middle_records_length_stops_the_daemon(self):
        # The length grows by 256 bytes: past the records after it, into the
        # zeroes, where a record cut short by a crash would end.
        self.saved("a", "b", "c", "d")
        log = self.read(LOG)
        at = record_offsets(log)
        bad = bytearray(log)
        bad[at[1] + 1] ^= 0x01
        self.write(LOG, bytes(bad))
        code, out = self.refused()
        self.assertEqual(code, 1, out)
        self.assertIn(f"{self.path(LOG)}: corrupt record at byte {at[1]}", out)
        self.assertEqual(self.read(LOG), bytes(bad))

    def test_torn_last_record_is_dropped(self):
        self.saved("a", "b", "c")
        log = bytearray(self.read(LOG))
        at = record_offsets(bytes(log))
        # A crash wrote the start of c's record, not its end.
        log[at[1] + 12:at[2]] = bytes(at[2] - at[1] - 12)
        self.write(LOG, bytes(log))
        self.d.start()
        self.assertEqual(self.listed(), ["a", "b"])
        self.d.nbdctl("create", "e", "--memory", "1MiB")
        self.assertEqual(self.d.stop(), 0)
        self.d.start()
        self.assertEqual(self.listed(), ["a", "b", "e"])

    def test_snapshot_replaced_by_a_directory_stops_the_daemon(self):
        self.saved("a", "b")
        log = self.read(LOG)
        os.unlink(self.path(SNAPSHOT))
        os.mkdir(self.path(SNAPSHOT))
        code, out = self.refused()
        self.assertEqual(code, 1, out)
        self.assertIn(f"{self.path(SNAPSHOT)}: is a directory", out)
        self.assertTrue(os.path.isdir(self.path(SNAPSHOT)))
        self.assertEqual(self.read(LOG), log)

    def test_empty_snapshot_stops_the_daemon(self):
        self.saved("a", "b")
        log = self.read(LOG)
        self.write(SNAPSHOT, b"")
        code, out = self.refused()
        self.assertEqual(code, 1, out)
        self.assertIn(f"{self.path(SNAPSHOT)}: empty", out)
        self.assertEqual(self.read(SNAPSHOT), b"")
        self.assertEqual(self.read(LOG), log)

    def test_second_daemon_on_the_same_state_dir_is_refused(self):
        self.d.start()
        self.d.nbdctl("create", "a", "--memory", "1MiB")
        second = Daemon(["name=m,backend=memory,size=1MiB"])
        self.addCleanup(second.cleanup)
        i = second.args.index("--state-dir")
        second.args[i + 1] = self.d.state_dir
        code, out = self.refused(second.args)
        self.assertEqual(code, 1, out)
        self.assertIn(f"state directory {self.d.state_dir} is in use by another "
                      f"nbdmgrd (pid {self.d.proc.pid})", out)
        # The first one keeps serving, and its state is intact.
        self.assertIsNone(self.d.proc.poll())
        run("nbdinfo", "--size", self.d.uri("a"))
        self.d.nbdctl("create", "b", "--memory", "1MiB")
        self.assertEqual(self.listed(), ["a", "b"])
        # Once it is gone, the directory is free again.
        self.assertEqual(self.d.stop(), 0)
        second.start()
        self.assertEqual(self.listed(second), ["a", "b"])

    def test_existing_0755_state_dir_keeps_its_mode(self):
        os.mkdir(self.d.state_dir)
        os.chmod(self.d.state_dir, 0o755)
        self.saved("a")
        self.assertEqual(stat.S_IMODE(os.stat(self.d.state_dir).st_mode), 0o755)

    def test_world_writable_state_dir_is_refused_and_kept(self):
        os.mkdir(self.d.state_dir)
        os.chmod(self.d.state_dir, 0o777)
        code, out = self.refused()
        self.assertEqual(code, 1, out)
        self.assertIn(f"state directory {self.d.state_dir} is group- or "
                      "world-writable (mode 0777)", out)
        self.assertIn(f"chmod go-w {self.d.state_dir}", out)
        self.assertEqual(stat.S_IMODE(os.stat(self.d.state_dir).st_mode), 0o777)
        self.assertEqual(os.listdir(self.d.state_dir), [])

    def test_tmp_like_state_dir_behind_a_symlink_is_refused_and_kept(self):
        shared = os.path.join(self.d.dir, "tmp")
        os.mkdir(shared)
        os.chmod(shared, 0o1777)
        os.symlink(shared, self.d.state_dir)
        code, out = self.refused()
        self.assertEqual(code, 1, out)
        self.assertIn("world-writable (mode 1777)", out)
        self.assertEqual(stat.S_IMODE(os.stat(shared).st_mode), 0o1777)
        self.assertEqual(os.listdir(shared), [])

    def test_planted_symlink_at_the_temp_path_is_not_followed(self):
        self.d.start()  # creates the state directory, writes nothing yet
        victim = os.path.join(self.d.dir, "victim")
        with open(victim, "w") as f:
            f.write("precious\n")
        for name in (SNAPSHOT, LOG):
            os.symlink(victim, self.path(name + ".tmp"))
        self.d.nbdctl("create", "a", "--memory", "1MiB")  # a snapshot, a log
        with open(victim) as f:
            self.assertEqual(f.read(), "precious\n")
        for name in (SNAPSHOT, LOG):
            self.assertFalse(os.path.lexists(self.path(name + ".tmp")))
            self.assertTrue(stat.S_ISREG(os.lstat(self.path(name)).st_mode))
        self.assertEqual(self.d.stop(), 0)
        self.d.start()
        self.assertEqual(self.listed(), ["a"])


if __name__ == "__main__":
    unittest.main()
