#!/usr/bin/python3
"""Interop: nbdctl's command line (CLI11): global flags anywhere on the line,
generated help, usage errors and exit codes, against the real daemon."""
import json
import os
import tempfile
import unittest

from nbdmgr_fixture import NBDCTL, Daemon, run

EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3

GLOBAL_FLAGS = ["--control", "-o,--output", "--tls-ca", "--tls-cert", "--tls-key",
                "--insecure", "--version", "-h,--help"]
COMMANDS = ["create", "list", "get", "update", "remove", "bitmap", "overlay", "daemon",
            "stats", "health"]


def nbdctl(*args):
    """nbdctl with exactly these arguments (no --control added)."""
    return run(NBDCTL, *args, check=False)


class GlobalFlagsAnywhereTest(unittest.TestCase):
    def setUp(self):
        self.d = Daemon(["name=cli,backend=memory,size=1MiB"])
        self.d.start()
        self.control = f"unix:{self.d.control}"

    def tearDown(self):
        code = self.d.stop()
        logs = self.d.logs()
        self.d.cleanup()
        self.assertEqual(code, 0, logs)

    def ok(self, *args):
        p = nbdctl(*args)
        self.assertEqual(p.returncode, 0, (args, p.stderr))
        return p.stdout

    def test_output_before_or_after_the_command(self):
        before = self.ok("--control", self.control, "-o", "json", "list")
        after = self.ok("--control", self.control, "list", "-o", "json")
        self.assertEqual(before, after)
        self.assertEqual([e["name"] for e in json.loads(after)["exports"]], ["exports/cli"])
        self.assertEqual(self.ok("list", "--output=json", "--control", self.control), before)
        # Without -o, the table.
        self.assertIn("NAME", self.ok("list", "--control", self.control))

    def test_control_after_the_command_and_its_arguments(self):
        for args in (["get", "cli", "--control", self.control, "-o", "json"],
                     ["get", "--control", self.control, "cli", "-ojson"],
                     ["-o", "json", "get", "cli", f"--control={self.control}"],
                     ["get", "-o=json", "cli", "--control", self.control]):
            self.assertEqual(json.loads(self.ok(*args))["name"], "exports/cli", args)

    def test_global_flags_mixed_with_command_flags(self):
        out = self.ok("create", "vm", "--control", self.control, "--memory", "2MiB",
                      "-o", "json", "--description", "d", "--read-only")
        got = json.loads(out)
        self.assertEqual((got["name"], got["description"], got["read_only"]),
                         ("exports/vm", "d", True))
        out = self.ok("update", "vm", "--max-clients", "2", "-o", "json",
                      "--control", self.control)
        self.assertEqual(json.loads(out)["max_clients"], 2)
        out = self.ok("remove", "vm", "--mode", "hard", "--control", self.control)
        self.assertEqual(out, "removed vm (0 connection(s) closed)\n")

    def test_last_output_flag_wins(self):
        # As before CLI11: stats' own -o overrode a global one.
        text = self.ok("--control", self.control, "-o", "json", "stats", "cli",
                       "-o", "prometheus")
        self.assertIn("# TYPE", text)
        daemon = json.loads(self.ok("daemon", "--control", self.control, "-o", "table",
                                    "-o", "json"))
        self.assertEqual(int(daemon["exports"]), 1)

    def test_health_with_flags_after(self):
        self.assertEqual(self.ok("health", "--control", self.control), "SERVING\n")
        self.assertEqual(self.ok("health", "nbdmgr.v1.ExportService",
                                 "--control", self.control), "SERVING\n")
        p = nbdctl("health", "no.such.Service", "--control", self.control)
        self.assertEqual(p.returncode, EXIT_SERVER_ERROR)
        self.assertIn("NOT_FOUND", p.stderr)

    def test_bad_output_after_the_command(self):
        p = nbdctl("list", "-o", "yaml", "--control", self.control)
        self.assertEqual(p.returncode, EXIT_USAGE)
        self.assertIn("-o must be table or json", p.stderr)
        p = nbdctl("stats", "-o", "yaml", "--control", self.control)
        self.assertEqual(p.returncode, EXIT_USAGE)
        self.assertIn("-o must be table, json or prometheus", p.stderr)

    def test_daemon_errors_keep_their_exit_codes(self):
        p = nbdctl("get", "nope", "--control", self.control)
        self.assertEqual(p.returncode, EXIT_SERVER_ERROR)
        self.assertIn("NOT_FOUND", p.stderr)
        gone = os.path.join(tempfile.gettempdir(), "nbdctl-test-no-such.sock")
        p = nbdctl("list", "--control", f"unix:{gone}")
        self.assertEqual(p.returncode, EXIT_UNAVAILABLE)
        self.assertIn("UNAVAILABLE", p.stderr)
        p = nbdctl("list", "--control", "carrier-pigeon:x")
        self.assertEqual(p.returncode, EXIT_USAGE)
        self.assertIn("--control", p.stderr)


class HelpTest(unittest.TestCase):
    """Help needs no daemon."""

    def test_tool_help_lists_global_flags_and_commands(self):
        for args in (["--help"], ["-h"], ["help"]):
            p = nbdctl(*args)
            self.assertEqual(p.returncode, 0, args)
            self.assertTrue(p.stdout.startswith("Usage: nbdctl "), p.stdout)
            for flag in GLOBAL_FLAGS + COMMANDS:
                self.assertIn(flag, p.stdout, (args, flag))
            self.assertIn("Exit codes", p.stdout)
            self.assertEqual(p.stderr, "")

    def test_command_help_lists_its_flags(self):
        flags = {
            "create": ["NAME", "--memory SIZE", "--null SIZE", "--file PATH", "--size SIZE",
                       "--io MODE", "--read-only", "--description TEXT", "--buffer-strategy S",
                       "--memory-cap SIZE", "--pool-idle-release DUR", "--tls MODE",
                       "--max-clients N", "--stall-timeout DUR", "--min-block-size N",
                       "--preferred-block-size N", "--max-payload N", "--overlay-of BASE",
                       "--cluster-size SIZE"],
            "list": [],
            "get": ["NAME"],
            "update": ["NAME", "--description TEXT", "--buffer-strategy S",
                       "--memory-cap SIZE", "--pool-idle-release DUR", "--tls MODE",
                       "--max-clients N", "--stall-timeout DUR", "--retry"],
            "remove": ["NAME", "--mode MODE", "--timeout DUR"],
            "daemon": ["--memory-cap SIZE"],
            "stats": ["[NAME]", "--watch DUR", "--count N", "-o prometheus"],
            "health": ["[SERVICE]"],
        }
        for command, expected in flags.items():
            for args in ([command, "--help"], [command, "-h"], ["--help", command]):
                p = nbdctl(*args)
                self.assertEqual(p.returncode, 0, args)
                self.assertTrue(p.stdout.startswith(f"Usage: nbdctl {command} "), p.stdout)
                for flag in expected + ["--help"]:
                    self.assertIn(flag, p.stdout, (args, flag))
                # Each points at the global flags.
                self.assertIn("--control ADDR", p.stdout, args)

    def test_help_wins_over_missing_arguments(self):
        # `get --help` needs no NAME, and no daemon is contacted.
        p = nbdctl("get", "--help", "--control", "unix:/nonexistent")
        self.assertEqual(p.returncode, 0)
        self.assertIn("Usage: nbdctl get", p.stdout)

    def test_version(self):
        p = nbdctl("--version")
        self.assertEqual(p.returncode, 0)
        self.assertRegex(p.stdout, r"^nbdctl \d+\.\d+\.\d+\n$")


class UsageErrorTest(unittest.TestCase):
    """Bad command lines exit 2 naming the culprit, before any daemon is
    contacted (--control points nowhere)."""

    def usage_error(self, *args):
        p = nbdctl("--control", "unix:/nonexistent", *args)
        self.assertEqual(p.returncode, EXIT_USAGE, (args, p.stderr))
        self.assertEqual(p.stdout, "")
        return p.stderr.splitlines()[0]

    def test_unknown_flag_is_named(self):
        self.assertEqual(self.usage_error("list", "--frobnicate"),
                         "nbdctl: unknown flag --frobnicate")
        self.assertEqual(self.usage_error("--frobnicate", "list"),
                         "nbdctl: unknown flag --frobnicate")
        self.assertEqual(self.usage_error("create", "vm", "--memroy", "1MiB"),
                         "nbdctl: unknown flag --memroy")
        # A command's flag is not a global one.
        self.assertEqual(self.usage_error("--memory", "1MiB", "create", "vm"),
                         "nbdctl: unknown flag --memory")
        self.assertEqual(self.usage_error("list", "--retry"), "nbdctl: unknown flag --retry")

    def test_bad_commands_and_arguments(self):
        self.assertEqual(self.usage_error(), "nbdctl: missing command")
        self.assertEqual(self.usage_error("frobnicate"), "nbdctl: unknown command frobnicate")
        self.assertEqual(self.usage_error("get", "a", "b"), "nbdctl: unexpected argument b")
        self.assertIn("NAME", self.usage_error("get"))
        self.assertIn("--output", self.usage_error("list", "-o"))
        self.assertIn("--control", self.usage_error("list", "--control"))
        self.assertIn("--mode", self.usage_error("remove", "vm", "--mode", "gentle"))
        self.assertIn("--count", self.usage_error("stats", "--count", "0"))

    def test_usage_error_shows_the_commands_help(self):
        p = nbdctl("create", "vm", "--bogus")
        self.assertIn("Usage: nbdctl create [FLAGS] NAME", p.stderr)
        p = nbdctl("bogus")
        self.assertIn("Usage: nbdctl [FLAGS] COMMAND", p.stderr)


if __name__ == "__main__":
    unittest.main()
