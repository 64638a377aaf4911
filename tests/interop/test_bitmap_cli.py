#!/usr/bin/python3
"""Interop: dirty bitmaps over the control API, driven with nbdctl bitmap
against the real daemon: results, error codes, exit codes, usage errors, and
a daemon that still serves after every bad call."""
import json
import unittest

import nbd

from nbdmgr_fixture import NBDCTL, Daemon, NbdctlChecks, run

MiB = 1 << 20


class BitmapCliTest(NbdctlChecks, unittest.TestCase):
    def setUp(self):
        self.d = Daemon(["name=vm,backend=memory,size=64MiB"])
        self.d.start()

    def tearDown(self):
        # Whatever the test sent, the daemon still serves, then exits cleanly.
        try:
            h = nbd.NBD()
            h.connect_uri(self.d.uri("vm"))
            h.pwrite(b"x" * 4096, 0)
            self.assertEqual(h.pread(4096, 0), b"x" * 4096)
            h.shutdown()
            self.assertIn("vm", self.ctl("list").stdout)
        finally:
            code = self.d.stop()
            logs = self.d.logs()
            self.d.cleanup()
        self.assertEqual(code, 0, logs)

    def listed(self):
        """{bitmap id: Bitmap as JSON} from `nbdctl bitmap list vm`."""
        out = self.ctl_json("bitmap", "list", "vm")
        return {b["name"].rsplit("/", 1)[1]: b for b in out.get("bitmaps", [])}

    def table_row(self, stdout, bitmap):
        """The columns of `bitmap`'s row in a table nbdctl printed."""
        lines = stdout.splitlines()
        self.assertEqual(lines[0].split(),
                         ["NAME", "GRANULARITY", "STATE", "CONSISTENT", "DIRTY", "MEMORY"])
        rows = [line.split() for line in lines[1:] if line.split()[0] == bitmap]
        self.assertEqual(len(rows), 1, stdout)
        return rows[0]

    def test_add_takes_64KiB_by_default_and_list_shows_it(self):
        p = self.ctl("bitmap", "add", "vm", "b1")
        # 64 MiB at 64 KiB: 1024 bits, 128 bytes.
        self.assertEqual(self.table_row(p.stdout, "b1"),
                         ["b1", "64KiB", "active", "yes", "0B", "128B"])
        got = self.listed()["b1"]
        self.assertEqual(got, {"name": "exports/vm/bitmaps/b1",
                               "granularity_bytes": "65536", "active": True,
                               "consistent": True, "inconsistent_reason": "",
                               "dirty_bytes": "0", "memory_bytes": "128"})
        self.assertEqual(self.table_row(self.ctl("bitmap", "list", "vm").stdout, "b1"),
                         ["b1", "64KiB", "active", "yes", "0B", "128B"])

    def test_add_with_granularity(self):
        small = self.ctl_json("bitmap", "add", "vm", "small", "--granularity", "512")
        self.assertEqual(small["granularity_bytes"], "512")
        big = self.ctl_json("bitmap", "add", "vm", "big", "--granularity", "1MiB")
        self.assertEqual(big["granularity_bytes"], str(MiB))
        self.assertEqual(sorted(self.listed()), ["big", "small"])

    def test_list_without_bitmaps_is_the_header(self):
        self.assertEqual(self.ctl("bitmap", "list", "vm").stdout.split(),
                         ["NAME", "GRANULARITY", "STATE", "CONSISTENT", "DIRTY", "MEMORY"])
        self.assertEqual(self.ctl_json("bitmap", "list", "vm"), {"bitmaps": []})

    def test_duplicate_is_already_exists(self):
        self.ctl("bitmap", "add", "vm", "b1")
        err = self.fails("ALREADY_EXISTS", "bitmap", "add", "vm", "b1")
        self.assertIn('"b1" already exists', err)
        # With another granularity too: the name is what counts.
        self.fails("ALREADY_EXISTS", "bitmap", "add", "vm", "b1", "--granularity", "1MiB")
        self.assertEqual(self.listed()["b1"]["granularity_bytes"], "65536")

    def test_bad_names_are_invalid_argument(self):
        for name in ("_b", ".b", "a b", "a/b", "b" * 129, "é"):
            err = self.fails("INVALID_ARGUMENT", "bitmap", "add", "vm", name)
            self.assertIn("bitmap name", err, name)
        # A name that is no name: the resource name cannot be formed.
        self.fails("INVALID_ARGUMENT", "bitmap", "add", "vm", "")
        self.fails("INVALID_ARGUMENT", "bitmap", "clear", "vm", "a/b")
        self.fails("INVALID_ARGUMENT", "bitmap", "remove", "vm/bitmaps/x", "y")
        self.fails("INVALID_ARGUMENT", "bitmap", "list", "bad name")
        self.fails("INVALID_ARGUMENT", "bitmap", "checkpoint", "vm", "b1", "_new")
        self.assertEqual(self.listed(), {})
        # 128 characters are allowed.
        self.ctl("bitmap", "add", "vm", "b" * 128)

    def test_bad_granularity_is_invalid_argument(self):
        for g in ("1000", "100", "256", "511", "4GiB", "3MiB", "1.5KiB"):
            err = self.fails("INVALID_ARGUMENT", "bitmap", "add", "vm", "b", "--granularity", g)
            self.assertIn("power of two from 512", err, g)
        self.ctl("bitmap", "add", "vm", "a", "--granularity", "512")  # the smallest
        self.ctl("bitmap", "add", "vm", "b", "--granularity", "1KiB")
        self.ctl("bitmap", "add", "vm", "c", "--granularity", "2GiB")  # the largest
        self.assertEqual(sorted(self.listed()), ["a", "b", "c"])

    def test_unparsable_granularity_is_a_usage_error(self):
        for g in ("lots", "12XB", "1.5.2K", "-1"):
            line = self.usage_error("bitmap", "add", "vm", "b", "--granularity", g)
            self.assertIn("--granularity", line, g)
        self.assertIn("--granularity",
                      self.usage_error("bitmap", "checkpoint", "vm", "a", "b",
                                       "--granularity", "huge"))
        self.assertEqual(self.listed(), {})

    def test_checkpoint_freezes_the_old_and_starts_the_new(self):
        self.ctl("bitmap", "add", "vm", "b1", "--granularity", "128KiB")
        p = self.ctl("bitmap", "checkpoint", "vm", "b1", "b2")
        self.assertEqual(self.table_row(p.stdout, "b1")[:4], ["b1", "128KiB", "frozen", "yes"])
        # The new one takes the frozen one's granularity.
        self.assertEqual(self.table_row(p.stdout, "b2")[:4], ["b2", "128KiB", "active", "yes"])
        got = self.listed()
        self.assertFalse(got["b1"]["active"])
        self.assertTrue(got["b2"]["active"])
        # JSON answers both, and --granularity sets the new one's.
        out = self.ctl_json("bitmap", "checkpoint", "vm", "b2", "b3", "--granularity", "1MiB")
        self.assertEqual(out["frozen"]["name"], "exports/vm/bitmaps/b2")
        self.assertFalse(out["frozen"]["active"])
        self.assertEqual(out["frozen"]["granularity_bytes"], str(128 * 1024))
        self.assertEqual(out["started"]["name"], "exports/vm/bitmaps/b3")
        self.assertTrue(out["started"]["active"])
        self.assertEqual(out["started"]["granularity_bytes"], str(MiB))
        table = self.ctl("bitmap", "list", "vm").stdout
        self.assertEqual([self.table_row(table, b)[2] for b in ("b1", "b2", "b3")],
                         ["frozen", "frozen", "active"])

    def test_checkpoint_errors_change_nothing(self):
        self.ctl("bitmap", "add", "vm", "b1")
        self.ctl("bitmap", "checkpoint", "vm", "b1", "b2")
        before = self.listed()
        err = self.fails("FAILED_PRECONDITION", "bitmap", "checkpoint", "vm", "b1", "b3")
        self.assertIn("frozen already", err)
        self.fails("ALREADY_EXISTS", "bitmap", "checkpoint", "vm", "b2", "b1")
        self.fails("NOT_FOUND", "bitmap", "checkpoint", "vm", "nope", "b4")
        self.fails("INVALID_ARGUMENT", "bitmap", "checkpoint", "vm", "b2", "b5",
                   "--granularity", "1000")
        self.assertEqual(self.listed(), before)

    def test_clear(self):
        self.ctl("bitmap", "add", "vm", "b1")
        self.ctl("bitmap", "checkpoint", "vm", "b1", "b2")
        p = self.ctl("bitmap", "clear", "vm", "b1")
        # Clearing a frozen bitmap makes it record again (else it would
        # stay "nothing changed" forever).
        self.assertEqual(self.table_row(p.stdout, "b1")[2:5], ["active", "yes", "0B"])
        out = self.ctl_json("bitmap", "clear", "vm", "b2")
        self.assertEqual((out["name"], out["active"], out["dirty_bytes"]),
                         ("exports/vm/bitmaps/b2", True, "0"))
        err = self.fails("NOT_FOUND", "bitmap", "clear", "vm", "nope")
        self.assertIn('"nope"', err)

    def test_remove(self):
        self.ctl("bitmap", "add", "vm", "b1")
        self.ctl("bitmap", "add", "vm", "b2")
        self.assertEqual(self.ctl("bitmap", "remove", "vm", "b1").stdout,
                         "removed bitmap b1 of vm\n")
        self.assertEqual(sorted(self.listed()), ["b2"])
        err = self.fails("NOT_FOUND", "bitmap", "remove", "vm", "b1")
        self.assertIn('"b1"', err)
        self.assertEqual(self.ctl_json("bitmap", "remove", "vm", "b2"), {})
        self.assertEqual(self.listed(), {})
        # The name is free again.
        self.ctl("bitmap", "add", "vm", "b1")

    def test_unknown_export_is_not_found(self):
        for args in (["add", "nope", "b"], ["list", "nope"], ["clear", "nope", "b"],
                     ["remove", "nope", "b"], ["checkpoint", "nope", "a", "b"]):
            err = self.fails("NOT_FOUND", "bitmap", *args)
            self.assertIn('export "nope" not found', err, args)

    def test_at_most_32_bitmaps(self):
        for i in range(32):
            self.ctl("bitmap", "add", "vm", f"b{i}")
        self.fails("RESOURCE_EXHAUSTED", "bitmap", "add", "vm", "b32")
        self.fails("RESOURCE_EXHAUSTED", "bitmap", "checkpoint", "vm", "b0", "b32")
        self.assertTrue(self.listed()["b0"]["active"])
        self.ctl("bitmap", "remove", "vm", "b31")
        self.ctl("bitmap", "checkpoint", "vm", "b0", "b32")

    def test_usage_errors(self):
        self.assertIn("bitmap", self.usage_error("bitmap"))
        self.assertIn("frobnicate", self.usage_error("bitmap", "frobnicate"))
        self.assertIn("NAME", self.usage_error("bitmap", "add", "vm"))
        self.assertIn("EXPORT", self.usage_error("bitmap", "list"))
        self.assertIn("NEW", self.usage_error("bitmap", "checkpoint", "vm", "b1"))
        self.assertEqual(self.usage_error("bitmap", "remove", "vm", "b1", "extra"),
                         "nbdctl: unexpected argument extra")
        self.assertEqual(self.usage_error("bitmap", "list", "vm", "--frobnicate"),
                         "nbdctl: unknown flag --frobnicate")
        self.assertIn("--granularity",
                      self.usage_error("bitmap", "add", "vm", "b1", "--granularity"))
        self.assertIn("-o must be table or json",
                      self.usage_error("bitmap", "list", "vm", "-o", "prometheus"))
        self.assertEqual(self.listed(), {})

    def test_global_flags_anywhere(self):
        control = f"unix:{self.d.control}"
        p = run(NBDCTL, "bitmap", "add", "--control", control, "vm", "-o", "json", "b1",
                "--granularity", "4KiB")
        self.assertEqual(json.loads(p.stdout)["granularity_bytes"], "4096")
        p = run(NBDCTL, "-o", "json", "--control", control, "bitmap", "list", "vm")
        self.assertEqual(len(json.loads(p.stdout)["bitmaps"]), 1)

    def test_help(self):
        p = run(NBDCTL, "--help")
        self.assertIn("bitmap", p.stdout)
        p = run(NBDCTL, "bitmap", "--help")
        self.assertTrue(p.stdout.startswith("Usage: nbdctl bitmap "), p.stdout)
        for command in ("add", "list", "clear", "remove", "checkpoint"):
            self.assertIn(command, p.stdout)
        expected = {"add": ["EXPORT", "NAME", "--granularity SIZE"], "list": ["EXPORT"],
                    "clear": ["EXPORT", "NAME"], "remove": ["EXPORT", "NAME"],
                    "checkpoint": ["EXPORT", "FROZEN", "NEW", "--granularity SIZE"]}
        for command, words in expected.items():
            for args in (["bitmap", command, "--help"], ["--help", "bitmap", command]):
                p = run(NBDCTL, *args)
                self.assertTrue(p.stdout.startswith(f"Usage: nbdctl bitmap {command} "),
                                p.stdout)
                for word in words + ["--control ADDR"]:
                    self.assertIn(word, p.stdout, (args, word))

    def test_served_like_the_other_services(self):
        # CreateBitmapRequest{export: "\xff\xfe"}: not UTF-8.
        self.assert_served_like_the_others("BitmapService", "CreateBitmap",
                                           b"\x0a\x02\xff\xfe")

if __name__ == "__main__":
    unittest.main()
