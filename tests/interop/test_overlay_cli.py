#!/usr/bin/python3
"""Interop: copy-on-write overlays over the control API, driven with nbdctl
(create --overlay-of, overlay reset|commit|list, get, list) against the real
daemon, read and written with libnbd: data, error codes, exit codes, usage
errors, a clean restart, and a daemon that still serves after every bad
call."""
import json
import os
import random
import unittest

import nbd

from nbdmgr_fixture import NBDCTL, Daemon, NbdctlChecks, run, wait_for

KiB, MiB = 1 << 10, 1 << 20
SIZE = 8 * MiB
# What golden holds before any overlay: no byte of it is zero by chance
# where the tests look.
GOLDEN = bytes(b % 255 + 1 for b in random.Random(18).randbytes(SIZE))
LIST_HEADER = ["NAME", "BACKEND", "IO", "SIZE", "CLIENTS", "BUFFERS", "MEM", "CAP",
               "STATE"]
OVERLAY_HEADER = ["NAME", "CLUSTER", "ALLOCATED", "ZEROED", "COPY-UPS", "CLIENTS"]


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


class OverlayCliTest(NbdctlChecks, unittest.TestCase):
    def setUp(self):
        # golden: a writable command-line export; API files go under
        # `allowed`, and `outside` is a directory the daemon may not use.
        self.d = Daemon(["name=golden,backend=file,path={0}/golden.img,size=8MiB",
                         "name=mem,backend=memory,size=8MiB"])
        self.allowed = os.path.join(self.d.dir, "allowed")
        self.outside = os.path.join(self.d.dir, "outside")
        os.mkdir(self.allowed)
        os.mkdir(self.outside)
        self.d.args = [a.format(self.allowed) for a in self.d.args]
        self.d.args += ["--allow-path", self.allowed]
        self.d.start()
        self.write("golden", 0, GOLDEN)

    def tearDown(self):
        # Whatever the test sent, the daemon still serves, then exits cleanly.
        try:
            h = connect(self.d.uri("mem"))
            h.pwrite(b"x" * 4096, 0)
            self.assertEqual(h.pread(4096, 0), b"x" * 4096)
            h.shutdown()
            self.assertEqual(len(self.read("golden", 0, 4096)), 4096)
            self.assertIn("golden", self.ctl("list").stdout)
        finally:
            code = self.d.stop()
            logs = self.d.logs()
            self.d.cleanup()
        self.assertEqual(code, 0, logs)

    # --- helpers ---

    def path(self, name):
        return os.path.join(self.allowed, name)

    def write(self, export, offset, data):
        h = connect(self.d.uri(export))
        h.pwrite(data, offset)
        h.flush()
        h.shutdown()

    def read(self, export, offset=0, length=SIZE):
        h = connect(self.d.uri(export))
        try:
            return h.pread(length, offset)
        finally:
            h.shutdown()

    def read_only(self, export):
        """Whether a new client of `export` is told it is read-only."""
        p = run("nbdinfo", "--json", self.d.uri(export))
        return json.loads(p.stdout)["exports"][0]["is_read_only"]

    def create(self, name="ov", base="golden", *flags):
        """Creates overlay `name` of `base` with nbdctl; returns its JSON."""
        return self.ctl_json("create", name, "--overlay-of", base,
                             "--file", self.path(f"{name}.img"), *flags)

    def exports(self):
        """{export id: Export as JSON} from `nbdctl list`."""
        return {e["name"].split("/", 1)[1]: e
                for e in self.ctl_json("list").get("exports", [])}

    def overlays(self, base="golden"):
        """{overlay id: Export as JSON} from `nbdctl overlay list BASE`."""
        out = self.ctl_json("overlay", "list", base)
        return {e["name"].split("/", 1)[1]: e for e in out.get("overlays", [])}

    def overlay_row(self, stdout, name):
        """The columns of `name`'s row in an overlay table nbdctl printed."""
        lines = stdout.splitlines()
        self.assertEqual(lines[0].split(), OVERLAY_HEADER)
        rows = [line.split() for line in lines[1:] if line.split()[0] == name]
        self.assertEqual(len(rows), 1, stdout)
        return rows[0]

    def wait_no_clients(self, export):
        wait_for(lambda: self.ctl_json("get", export)["connected_clients"] == 0,
                 f"{export} without clients", timeout=10)

    # --- create, read, write ---

    def test_create_reads_the_base_which_turns_read_only(self):
        self.assertFalse(self.read_only("golden"))
        got = self.create()
        self.assertEqual(got["name"], "exports/ov")
        self.assertEqual(got["file"]["path"], self.path("ov.img"))
        self.assertEqual(got["file"]["base"], "golden")
        self.assertEqual(got["file"]["cluster_size_bytes"], "0")  # as asked
        self.assertEqual(got["overlay"], {"cluster_size_bytes": "65536",
                                          "allocated_bytes": "0", "zero_bytes": "0",
                                          "copy_ups": "0"})
        self.assertEqual(got["size_bytes"], str(SIZE))
        self.assertTrue(got["persistent"])
        self.assertTrue(os.path.exists(self.path("ov.img")))
        self.assertEqual(self.read("ov"), GOLDEN)
        # golden now serves read-only to new clients, and says why.
        self.assertTrue(self.read_only("golden"))
        self.assertFalse(self.read_only("ov"))
        exports = self.exports()
        self.assertEqual(exports["golden"]["overlays"], 1)
        self.assertFalse(exports["golden"]["read_only"])  # its own setting
        self.assertNotIn("overlay", exports["golden"])
        self.assertEqual(exports["ov"]["overlays"], 0)
        # The table keeps its columns; what overlays add follows it.
        lines = self.ctl("list").stdout.splitlines()
        self.assertEqual(lines[0].split(), LIST_HEADER)
        rows = {line.split()[0]: line.split() for line in lines[1:]}
        self.assertEqual(rows["ov"][1:4], [f"file:{self.path('ov.img')}", "threads", "8MiB"])
        self.assertIn("ov: overlay of golden: cluster 64KiB, allocated 0B, zeroed 0B, "
                      "0 copy-ups", lines)
        self.assertIn("golden: base of 1 overlay(s): served read-only", lines)
        # get prints the same.
        lines = self.ctl("get", "ov").stdout.splitlines()
        self.assertEqual(lines[0].split(), LIST_HEADER)
        self.assertIn("ov: overlay of golden: cluster 64KiB, allocated 0B, zeroed 0B, "
                      "0 copy-ups", lines)

    def test_writes_stay_in_the_overlay(self):
        self.create("ov", "golden", "--cluster-size", "128KiB")
        self.create("ov2")
        data = b"\xa5" * (4 * KiB)
        self.write("ov", MiB + 512, data)  # inside one cluster: a copy-up
        self.write("ov", 4 * MiB, b"\x3c" * (256 * KiB))  # two whole clusters
        h = connect(self.d.uri("ov"))
        h.zero(128 * KiB, 6 * MiB)
        h.flush()
        h.shutdown()
        want = bytearray(GOLDEN)
        want[MiB + 512:MiB + 512 + len(data)] = data
        want[4 * MiB:4 * MiB + 256 * KiB] = b"\x3c" * (256 * KiB)
        want[6 * MiB:6 * MiB + 128 * KiB] = bytes(128 * KiB)
        self.assertEqual(self.read("ov"), bytes(want))
        # Neither the base nor the other overlay of it sees any of it.
        self.assertEqual(self.read("golden"), GOLDEN)
        self.assertEqual(self.read("ov2"), GOLDEN)
        self.wait_no_clients("ov")
        got = self.overlays()
        self.assertEqual(sorted(got), ["ov", "ov2"])
        self.assertEqual(got["ov"]["overlay"], {
            "cluster_size_bytes": str(128 * KiB), "allocated_bytes": str(3 * 128 * KiB),
            "zero_bytes": str(128 * KiB), "copy_ups": "1"})
        self.assertEqual(got["ov2"]["overlay"]["allocated_bytes"], "0")
        table = self.ctl("overlay", "list", "golden").stdout
        self.assertEqual(self.overlay_row(table, "ov"),
                         ["ov", "128KiB", "384KiB", "128KiB", "1", "0"])
        self.assertEqual(self.overlay_row(table, "ov2"),
                         ["ov2", "64KiB", "0B", "0B", "0", "0"])
        # A client shows in CLIENTS.
        h = connect(self.d.uri("ov2"))
        self.assertEqual(self.overlay_row(self.ctl("overlay", "list", "golden").stdout,
                                          "ov2")[5], "1")
        h.shutdown()

    def test_list_without_overlays_is_the_header(self):
        self.assertEqual(self.ctl("overlay", "list", "golden").stdout.split(),
                         OVERLAY_HEADER)
        self.assertEqual(self.ctl_json("overlay", "list", "golden"), {"overlays": []})
        self.create()
        # An overlay has no overlays of its own.
        self.assertEqual(self.overlays("ov"), {})

    def test_overlay_of_a_file(self):
        base = self.path("golden-file.img")
        with open(base, "wb") as f:
            f.write(GOLDEN)
        got = self.create("ov", base)
        self.assertEqual(got["file"]["base"], base)
        self.assertEqual(self.read("ov"), GOLDEN)
        self.write("ov", 0, b"\x11" * 4096)
        self.assertEqual(self.read("ov", 0, 4096), b"\x11" * 4096)
        with open(base, "rb") as f:
            self.assertEqual(f.read(), GOLDEN)
        self.assertIn(f"ov: overlay of {base}: cluster 64KiB, allocated 64KiB, zeroed 0B, "
                      "1 copy-ups", self.ctl("get", "ov").stdout.splitlines())
        # Nothing to commit into: a base file is opened read-only.
        err = self.fails("FAILED_PRECONDITION", "overlay", "commit", "ov")
        self.assertIn("commit needs a base export", err)
        self.assertEqual(self.read("ov", 0, 4096), b"\x11" * 4096)

    # --- reset and commit ---

    def test_reset_waits_for_clients_then_drops_the_changes(self):
        self.create()
        self.write("ov", 2 * MiB, b"\x77" * (64 * KiB))
        h = connect(self.d.uri("ov"))
        err = self.fails("FAILED_PRECONDITION", "overlay", "reset", "ov")
        self.assertIn("1 client(s) connected", err)
        self.assertEqual(h.pread(4096, 2 * MiB), b"\x77" * 4096)
        h.shutdown()
        self.wait_no_clients("ov")
        p = self.ctl("overlay", "reset", "ov")
        self.assertEqual(self.overlay_row(p.stdout, "ov"),
                         ["ov", "64KiB", "0B", "0B", "0", "0"])
        self.assertEqual(self.read("ov"), GOLDEN)
        self.assertEqual(self.overlays()["ov"]["overlay"]["allocated_bytes"], "0")
        # JSON answers the overlay; resetting an empty one is fine.
        out = self.ctl_json("overlay", "reset", "ov")
        self.assertEqual((out["name"], out["overlay"]["allocated_bytes"]), ("exports/ov", "0"))

    def test_commit_writes_into_the_base_and_empties_the_overlay(self):
        self.create()
        self.create("ov2")
        self.write("ov", 3 * MiB, b"\x5a" * (100 * KiB))
        h = connect(self.d.uri("ov"))
        h.zero(64 * KiB, 0)
        h.flush()
        h.shutdown()
        want = bytearray(GOLDEN)
        want[3 * MiB:3 * MiB + 100 * KiB] = b"\x5a" * (100 * KiB)
        want[0:64 * KiB] = bytes(64 * KiB)
        self.wait_no_clients("ov")
        # Not while another overlay of golden has a client: its disk would
        # change under it.
        other = connect(self.d.uri("ov2"))
        err = self.fails("FAILED_PRECONDITION", "overlay", "commit", "ov")
        self.assertIn('"ov2"', err)
        self.assertEqual(self.read("golden"), GOLDEN)
        other.shutdown()
        self.wait_no_clients("ov2")
        # The overlay's own clients may stay: what they read is the same.
        mine = connect(self.d.uri("ov"))
        p = self.ctl("overlay", "commit", "ov")
        self.assertEqual(self.overlay_row(p.stdout, "ov")[2:4], ["0B", "0B"])
        self.assertEqual(mine.pread(SIZE, 0), bytes(want))
        mine.shutdown()
        self.assertEqual(self.read("golden"), bytes(want))
        self.assertEqual(self.read("ov"), bytes(want))
        self.assertEqual(self.read("ov2"), bytes(want))  # it reads golden
        self.assertEqual(self.overlays()["ov"]["overlay"],
                         {"cluster_size_bytes": "65536", "allocated_bytes": "0",
                          "zero_bytes": "0", "copy_ups": "1"})
        # golden stays read-only while it has overlays; writable once none.
        self.assertTrue(self.read_only("golden"))
        self.ctl("remove", "ov")
        self.ctl("remove", "ov2")
        self.assertFalse(self.read_only("golden"))
        self.assertEqual(self.exports()["golden"]["overlays"], 0)
        self.assertNotIn("base of", self.ctl("list").stdout)

    def test_commit_into_a_read_only_base_is_refused(self):
        with open(self.path("ro.img"), "wb") as f:
            f.write(bytes(MiB))
        self.ctl("create", "ro", "--file", self.path("ro.img"), "--read-only")
        self.create("ov", "ro")
        self.write("ov", 0, b"\x01" * 4096)
        err = self.fails("FAILED_PRECONDITION", "overlay", "commit", "ov")
        self.assertIn('"ro" is read-only', err)
        self.assertEqual(self.read("ov", 0, 4096), b"\x01" * 4096)
        self.assertEqual(self.read("ro", 0, 4096), bytes(4096))

    # --- refusals ---

    def test_base_with_overlays_cannot_be_removed(self):
        self.ctl("create", "base2", "--file", self.path("base2.img"), "--size", "1MiB")
        self.create("ov", "base2")
        err = self.fails("FAILED_PRECONDITION", "remove", "base2")
        self.assertIn("base of 1 overlay(s)", err)
        for mode in ("drain", "hard"):
            self.fails("FAILED_PRECONDITION", "remove", "base2", "--mode", mode)
        self.assertIn("base2", self.exports())
        self.ctl("remove", "ov")
        self.ctl("remove", "base2")
        self.assertNotIn("base2", self.exports())

    def test_base_that_is_not_served_is_not_found(self):
        err = self.fails("NOT_FOUND", "create", "ov", "--overlay-of", "nope",
                         "--file", self.path("ov.img"))
        self.assertIn('base export "nope" not found', err)
        self.fails("NOT_FOUND", "create", "ov", "--overlay-of", self.path("nope.img"),
                   "--file", self.path("ov.img"))
        self.assertNotIn("ov", self.exports())
        self.assertFalse(os.path.exists(self.path("ov.img")))

    def test_base_file_outside_allow_path_is_permission_denied(self):
        base = os.path.join(self.outside, "golden.img")
        with open(base, "wb") as f:
            f.write(GOLDEN)
        self.fails("PERMISSION_DENIED", "create", "ov", "--overlay-of", base,
                   "--file", self.path("ov.img"))
        # Nor may the overlay file itself lie outside.
        self.fails("PERMISSION_DENIED", "create", "ov", "--overlay-of", "golden",
                   "--file", os.path.join(self.outside, "ov.img"))
        self.assertNotIn("ov", self.exports())
        self.assertEqual(sorted(os.listdir(self.outside)), ["golden.img"])
        self.assertFalse(os.path.exists(self.path("ov.img")))

    def test_bad_cluster_sizes_are_invalid_argument(self):
        for size in ("3000", "2KiB", "4MiB", "96KiB", "8GiB"):
            err = self.fails("INVALID_ARGUMENT", "create", "ov", "--overlay-of", "golden",
                             "--file", self.path("ov.img"), "--cluster-size", size)
            self.assertIn("cluster", err, size)
        self.assertNotIn("ov", self.exports())
        self.assertFalse(os.path.exists(self.path("ov.img")))
        # The bounds themselves are fine.
        self.assertEqual(self.create("a", "golden", "--cluster-size", "4KiB")
                         ["overlay"]["cluster_size_bytes"], "4096")
        self.assertEqual(self.create("b", "golden", "--cluster-size", "2MiB")
                         ["overlay"]["cluster_size_bytes"], str(2 * MiB))

    def test_other_bad_creates_are_refused(self):
        args = ["--file", self.path("ov.img")]
        # A base name that is neither a name nor an absolute path.
        self.fails("INVALID_ARGUMENT", "create", "ov", "--overlay-of", "rel/golden.img", *args)
        self.fails("INVALID_ARGUMENT", "create", "ov", "--overlay-of", "ov", *args)
        # Its size is the base's.
        err = self.fails("INVALID_ARGUMENT", "create", "ov", "--overlay-of", "golden",
                         "--size", "1MiB", *args)
        self.assertIn("base's size", err)
        self.fails("INVALID_ARGUMENT", "create", "ov", "--overlay-of", "golden",
                   "--io", "io_uring", *args)
        # An existing file that is not an overlay is not taken for one.
        with open(self.path("plain.img"), "wb") as f:
            f.write(bytes(MiB))
        self.fails("DATA_LOSS", "create", "ov", "--overlay-of", "golden",
                   "--file", self.path("plain.img"))
        with open(self.path("plain.img"), "rb") as f:
            self.assertEqual(f.read(), bytes(MiB))
        self.assertNotIn("ov", self.exports())
        self.assertFalse(os.path.exists(self.path("ov.img")))
        # A writable base with a client cannot get its first overlay.
        self.ctl("create", "busy", "--file", self.path("busy.img"), "--size", "1MiB")
        h = connect(self.d.uri("busy"))
        err = self.fails("FAILED_PRECONDITION", "create", "ov", "--overlay-of", "busy", *args)
        self.assertIn("client(s) connected", err)
        h.shutdown()
        self.wait_no_clients("busy")
        self.create("ov", "busy")
        # With --size the base's, it is a check that passes.
        self.create("ov2", "busy", "--size", "1MiB")

    def test_reset_commit_list_of_what_is_no_overlay(self):
        for command in ("reset", "commit"):
            err = self.fails("FAILED_PRECONDITION", "overlay", command, "golden")
            self.assertIn('"golden" is not an overlay', err)
            err = self.fails("NOT_FOUND", "overlay", command, "nope")
            self.assertIn('"nope" not found', err)
            self.fails("INVALID_ARGUMENT", "overlay", command, "bad name")
        self.fails("NOT_FOUND", "overlay", "list", "nope")
        self.fails("INVALID_ARGUMENT", "overlay", "list", "a/b")

    # --- persistence ---

    def test_clean_restart_brings_api_overlays_back(self):
        self.create("ov", "golden", "--cluster-size", "256KiB")
        base = self.path("golden-file.img")
        with open(base, "wb") as f:
            f.write(GOLDEN)
        self.create("ov-file", base)
        self.write("ov", 5 * MiB, b"\xee" * (300 * KiB))
        self.write("ov-file", 7 * MiB, b"\xdd" * 4096)
        before = {n: self.ctl_json("get", n) for n in ("ov", "ov-file")}
        self.assertEqual(self.d.stop(), 0, self.d.logs())
        self.d.start()
        for name in ("ov", "ov-file"):
            got = self.ctl_json("get", name)
            self.assertEqual(got["state"], "STATE_ACTIVE", got)
            self.assertEqual(got["file"], before[name]["file"])
            self.assertEqual(got["overlay"]["cluster_size_bytes"],
                             before[name]["overlay"]["cluster_size_bytes"])
            self.assertEqual(got["overlay"]["allocated_bytes"],
                             before[name]["overlay"]["allocated_bytes"])
        self.assertEqual(self.ctl_json("get", "ov")["overlay"]["cluster_size_bytes"],
                         str(256 * KiB))
        want = bytearray(GOLDEN)
        want[5 * MiB:5 * MiB + 300 * KiB] = b"\xee" * (300 * KiB)
        self.assertEqual(self.read("ov"), bytes(want))
        want = bytearray(GOLDEN)
        want[7 * MiB:7 * MiB + 4096] = b"\xdd" * 4096
        self.assertEqual(self.read("ov-file"), bytes(want))
        self.assertEqual(self.read("golden"), GOLDEN)
        # golden is a base again, read-only, and not removable.
        self.assertEqual(self.exports()["golden"]["overlays"], 1)
        self.assertTrue(self.read_only("golden"))
        self.assertEqual(sorted(self.overlays()), ["ov"])
        self.fails("FAILED_PRECONDITION", "remove", "golden")
        # What came back can be committed like before.
        self.ctl("overlay", "commit", "ov")
        self.assertEqual(self.read("golden", 5 * MiB, 4096), b"\xee" * 4096)

    # --- the command line ---

    def test_usage_errors(self):
        self.assertIn("overlay", self.usage_error("overlay"))
        self.assertIn("frobnicate", self.usage_error("overlay", "frobnicate"))
        self.assertIn("NAME", self.usage_error("overlay", "reset"))
        self.assertIn("NAME", self.usage_error("overlay", "commit"))
        self.assertIn("BASE", self.usage_error("overlay", "list"))
        self.assertEqual(self.usage_error("overlay", "reset", "ov", "extra"),
                         "nbdctl: unexpected argument extra")
        self.assertEqual(self.usage_error("overlay", "list", "golden", "--frobnicate"),
                         "nbdctl: unknown flag --frobnicate")
        self.assertIn("-o must be table or json",
                      self.usage_error("overlay", "list", "golden", "-o", "prometheus"))
        file = ["--file", self.path("ov.img")]
        self.assertEqual(self.usage_error("create", "ov", "--overlay-of", "golden",
                                          "--memory", "1MiB"),
                         "nbdctl: --overlay-of needs --file, the overlay's own file")
        self.assertEqual(self.usage_error("create", "ov", *file, "--cluster-size", "64KiB"),
                         "nbdctl: --cluster-size is only for --overlay-of")
        for size in ("lots", "12XB", "-1"):
            self.assertIn("--cluster-size",
                          self.usage_error("create", "ov", "--overlay-of", "golden", *file,
                                           "--cluster-size", size))
        self.assertIn("--overlay-of", self.usage_error("create", "ov", *file, "--overlay-of"))
        self.assertNotIn("ov", self.exports())
        self.assertFalse(os.path.exists(self.path("ov.img")))

    def test_help(self):
        p = run(NBDCTL, "--help")
        self.assertIn("overlay", p.stdout)
        p = run(NBDCTL, "create", "--help")
        for word in ("--overlay-of BASE", "--cluster-size SIZE"):
            self.assertIn(word, p.stdout)
        p = run(NBDCTL, "overlay", "--help")
        self.assertTrue(p.stdout.startswith("Usage: nbdctl overlay "), p.stdout)
        for command in ("reset", "commit", "list"):
            self.assertIn(command, p.stdout)
        expected = {"reset": "NAME", "commit": "NAME", "list": "BASE"}
        for command, word in expected.items():
            for args in (["overlay", command, "--help"], ["--help", "overlay", command]):
                p = run(NBDCTL, *args)
                self.assertTrue(p.stdout.startswith(f"Usage: nbdctl overlay {command} "),
                                p.stdout)
                for w in (word, "--control ADDR"):
                    self.assertIn(w, p.stdout, (args, w))

    def test_served_like_the_other_services(self):
        # ResetOverlayRequest{name: "\xff\xfe"}: not UTF-8.
        self.assert_served_like_the_others("OverlayService", "ResetOverlay",
                                           b"\x0a\x02\xff\xfe")

if __name__ == "__main__":
    unittest.main()
