#!/usr/bin/python3
"""Interop: QoS limits and QoS groups over the control API, driven with
nbdctl (create/update/get/list limit flags and --qos-group, qos-group
create|list|get|update|delete, stats) and raw gRPC (update_mask paths)
against the real daemon: round trips of limits, narrow updates, codes and
exit codes for errors, usage errors, --qos-group on the command line and in
a config file, persistence across a clean restart, metrics, and a daemon
that still serves after every bad call."""
import json
import os
import subprocess
import tempfile
import unittest

import nbd

from nbdmgr_fixture import (NBDCTL, NBDMGRD, Daemon, NbdctlChecks, grpc_api, run,
                            scrape_metrics)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
FIELDS = ["iops_total", "iops_read", "iops_write", "bps_total", "bps_read", "bps_write"]
# nbdctl flag -> the API field it sets.
FLAG_FIELD = {"--iops": "iops_total", "--iops-read": "iops_read",
              "--iops-write": "iops_write", "--bandwidth": "bps_total",
              "--bandwidth-read": "bps_read", "--bandwidth-write": "bps_write"}
GROUP_HEADER = ["NAME", "SOURCE", "EXPORTS", "THROTTLED", "WAITED", "s", "WAITING",
                "LIMITS"]
# Every limit flag with a value, and what the API holds for it: (rate, burst).
ALL_FLAGS = ["--iops", "5000", "--iops-burst", "500",
             "--iops-read", "3000", "--iops-read-burst", "300",
             "--iops-write", "2000", "--iops-write-burst", "200",
             "--bandwidth", "200MiB", "--bandwidth-burst", "16MiB",
             "--bandwidth-read", "100MiB", "--bandwidth-read-burst", "8MiB",
             "--bandwidth-write", "50MiB", "--bandwidth-write-burst", "4MiB"]
ALL_LIMITS = {"iops_total": (5000, 500), "iops_read": (3000, 300),
              "iops_write": (2000, 200), "bps_total": (200 * MiB, 16 * MiB),
              "bps_read": (100 * MiB, 8 * MiB), "bps_write": (50 * MiB, 4 * MiB)}


def limits(qos):
    """{field: (rate, burst)} of the limits set in a QosLimits as JSON."""
    out = {}
    for field in FIELDS:
        r = (qos or {}).get(field)
        if r and int(r.get("rate", 0)):
            out[field] = (int(r["rate"]), int(r.get("burst", 0)))
    return out


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


class QosCliTest(NbdctlChecks, unittest.TestCase):
    def setUp(self):
        # daemon-g: a group given on the command line; cli: a command-line
        # export with limits of its own, in it; mem: unlimited.
        self.d = Daemon(["name=mem,backend=memory,size=8MiB",
                         "name=cli,backend=memory,size=8MiB,iops=100000,"
                         "bandwidth-write=1GiB,bandwidth-write-burst=64MiB,"
                         "qos-group=daemon-g"],
                        extra=["--qos-group", "name=daemon-g,iops=200000,bandwidth=4GiB"])
        self.d.start()

    def tearDown(self):
        # Whatever the test sent, the daemon still serves, then exits cleanly.
        try:
            h = connect(self.d.uri("mem"))
            h.pwrite(b"x" * 4096, 0)
            self.assertEqual(h.pread(4096, 0), b"x" * 4096)
            h.shutdown()
            self.assertIn("daemon-g", self.ctl("qos-group", "list").stdout)
        finally:
            code = self.d.stop()
            logs = self.d.logs()
            self.d.cleanup()
        self.assertEqual(code, 0, logs)

    # --- helpers ---

    def export(self, name):
        return self.ctl_json("get", name)

    def group(self, name):
        return self.ctl_json("qos-group", "get", name)

    def groups(self):
        """{group id: QosGroup as JSON} from `nbdctl qos-group list`."""
        return {g["name"].split("/", 1)[1]: g
                for g in self.ctl_json("qos-group", "list").get("qos_groups", [])}

    def exports(self):
        return {e["name"].split("/", 1)[1]: e
                for e in self.ctl_json("list").get("exports", [])}

    def group_row(self, stdout, name):
        """The columns of `name`'s row in a qos-group table nbdctl printed."""
        lines = stdout.splitlines()
        self.assertEqual(lines[0].split(), GROUP_HEADER)
        rows = [line.split() for line in lines[1:]
                if line.split() and line.split()[0] == name]
        self.assertEqual(len(rows), 1, stdout)
        return rows[0]

    def create(self, name, *flags):
        return self.ctl_json("create", name, "--memory", "8MiB", *flags)

    def nothing_changed(self, exports, groups):
        self.assertEqual(sorted(self.exports()), exports)
        self.assertEqual(sorted(self.groups()), groups)

    # --- limits of exports ---

    def test_create_with_every_limit_flag(self):
        got = self.create("vm1", *ALL_FLAGS)
        self.assertEqual(limits(got["qos"]), ALL_LIMITS)
        self.assertEqual(got["qos_group"], "")
        self.assertEqual(limits(self.export("vm1")["qos"]), ALL_LIMITS)
        self.assertEqual(limits(self.exports()["vm1"]["qos"]), ALL_LIMITS)
        # The table is followed by a line of the limits, as spec keys.
        for args in (["get", "vm1"], ["list"]):
            out = self.ctl(*args).stdout
            self.assertIn("vm1: QoS limits iops=5000,iops-burst=500,iops-read=3000,"
                          "iops-read-burst=300,iops-write=2000,iops-write-burst=200,"
                          "bandwidth=200MiB,bandwidth-burst=16MiB,bandwidth-read=100MiB,"
                          "bandwidth-read-burst=8MiB,bandwidth-write=50MiB,"
                          "bandwidth-write-burst=4MiB\n", out)
            self.assertNotIn("mem: QoS", out)  # unlimited: no line
        # One flag alone, in bytes or with decimal units.
        got = self.create("vm2", "--bandwidth-read", "1000000")
        self.assertEqual(limits(got["qos"]), {"bps_read": (1000000, 0)})
        got = self.create("vm3", "--bandwidth", "10MB")
        self.assertEqual(limits(got["qos"]), {"bps_total": (10000000, 0)})
        # No flag: no limits, no "qos" in the answer.
        got = self.create("vm4")
        self.assertEqual(limits(got.get("qos")), {})
        self.assertNotIn("vm4: QoS", self.ctl("get", "vm4").stdout)

    def test_command_line_export_shows_its_limits_and_group(self):
        got = self.export("cli")
        self.assertEqual(limits(got["qos"]), {"iops_total": (100000, 0),
                                              "bps_write": (GiB, 64 * MiB)})
        self.assertEqual(got["qos_group"], "qosGroups/daemon-g")
        self.assertIn("cli: QoS limits iops=100000,bandwidth-write=1GiB,"
                      "bandwidth-write-burst=64MiB, group daemon-g\n",
                      self.ctl("get", "cli").stdout)

    def test_update_changes_only_what_its_flags_name(self):
        self.create("vm1", "--iops", "5000", "--iops-burst", "500",
                    "--bandwidth", "200MiB", "--bandwidth-burst", "16MiB")
        # --iops alone: the rate; its burst and the bandwidth limit stay.
        got = self.ctl_json("update", "vm1", "--iops", "8000")
        self.assertEqual(limits(got["qos"]), {"iops_total": (8000, 500),
                                              "bps_total": (200 * MiB, 16 * MiB)})
        # A burst alone keeps its rate.
        got = self.ctl_json("update", "vm1", "--bandwidth-burst", "32MiB")
        self.assertEqual(limits(got["qos"]), {"iops_total": (8000, 500),
                                              "bps_total": (200 * MiB, 32 * MiB)})
        # New limits add to the others, rate and burst at once.
        got = self.ctl_json("update", "vm1", "--iops-write", "100",
                            "--iops-write-burst", "10", "--bandwidth-read", "1GiB")
        self.assertEqual(limits(got["qos"]), {
            "iops_total": (8000, 500), "iops_write": (100, 10),
            "bps_total": (200 * MiB, 32 * MiB), "bps_read": (GiB, 0)})
        # 0 removes a limit and its burst.
        got = self.ctl_json("update", "vm1", "--iops", "0", "--iops-write", "0")
        self.assertEqual(limits(got["qos"]), {"bps_total": (200 * MiB, 32 * MiB),
                                              "bps_read": (GiB, 0)})
        self.assertEqual(got["qos"].get("iops_total", {}).get("burst", "0"), "0")
        # Other fields in the same call, and get agrees.
        got = self.ctl_json("update", "vm1", "--description", "limited",
                            "--bandwidth", "0", "--bandwidth-read", "0")
        self.assertEqual(got["description"], "limited")
        self.assertEqual(limits(got.get("qos")), {})
        self.assertEqual(limits(self.export("vm1").get("qos")), {})
        self.assertNotIn("vm1: QoS", self.ctl("get", "vm1").stdout)

    def test_update_of_a_command_line_export(self):
        got = self.ctl_json("update", "cli", "--iops", "50000")
        self.assertEqual(limits(got["qos"]), {"iops_total": (50000, 0),
                                              "bps_write": (GiB, 64 * MiB)})
        self.assertEqual(got["qos_group"], "qosGroups/daemon-g")

    def test_limits_apply_to_clients(self):
        # 50 operations per second with a burst of 5: 30 reads take about
        # half a second and are counted as throttled; mem is not.
        self.create("slow", "--iops", "50", "--iops-burst", "5")
        h = connect(self.d.uri("slow"))
        for i in range(30):
            h.pread(4096, i * 4096)
        h.shutdown()
        h = connect(self.d.uri("mem"))
        for i in range(30):
            h.pread(4096, i * 4096)
        h.shutdown()
        stats = self.ctl_json("stats")
        by_name = {e["name"]: e for e in stats["exports"]}
        q = by_name["exports/slow"]["qos"]
        self.assertTrue(q["limited"])
        self.assertGreater(int(q["throttled_requests"]), 0)
        self.assertGreater(q["throttled_seconds"], 0.2)
        self.assertEqual(int(q["waiting_requests"]), 0)
        self.assertEqual(q["group"], "")
        q = by_name["exports/mem"].get("qos", {})
        self.assertFalse(q.get("limited", False))
        self.assertEqual(int(q.get("throttled_requests", 0)), 0)
        self.assertEqual(by_name["exports/cli"]["qos"]["group"], "qosGroups/daemon-g")
        groups = {g["name"]: g for g in stats["qos_groups"]}
        self.assertEqual(int(groups["qosGroups/daemon-g"]["members"]), 1)
        # The table has a QoS section for limited exports and one for groups.
        out = self.ctl("stats").stdout
        lines = out.splitlines()
        header = [i for i, line in enumerate(lines) if line.startswith("QOS EXPORT")]
        self.assertEqual(len(header), 1, out)
        qos_rows = {}
        for line in lines[header[0] + 1:]:
            if line.startswith("QOS GROUP"):
                break
            qos_rows[line.split()[0]] = line.split()
        self.assertIn("slow", qos_rows)
        self.assertIn("cli", qos_rows)
        self.assertNotIn("mem", qos_rows)
        self.assertEqual(qos_rows["cli"][1], "daemon-g")
        self.assertGreater(int(qos_rows["slow"][4]), 0)  # throttled in total
        self.assertIn("QOS GROUP", out)
        self.assertIn("daemon-g", out.split("QOS GROUP", 1)[1])
        # Prometheus: series for limited exports and for groups only.
        m = scrape_metrics(self.d)
        self.assertGreater(m['nbdmgr_qos_throttled_requests_total{export="slow"}'], 0)
        self.assertGreater(m['nbdmgr_qos_throttled_seconds_total{export="slow"}'], 0.2)
        self.assertEqual(m['nbdmgr_qos_waiting_requests{export="slow"}'], 0)
        self.assertIn('nbdmgr_qos_throttled_requests_total{export="cli"}', m)
        self.assertNotIn('nbdmgr_qos_throttled_requests_total{export="mem"}', m)
        self.assertEqual(m['nbdmgr_qos_group_members{group="daemon-g"}'], 1)
        self.assertIn('nbdmgr_qos_group_throttled_seconds_total{group="daemon-g"}', m)
        self.assertIn('nbdmgr_qos_group_throttled_requests_total{group="daemon-g"}', m)
        self.assertIn('nbdmgr_qos_group_waiting_requests{group="daemon-g"}', m)
        # nbdctl stats -o prometheus says the same.
        text = self.ctl("stats", "-o", "prometheus").stdout
        self.assertIn('nbdmgr_qos_group_members{group="daemon-g"} 1', text)
        self.assertIn('nbdmgr_qos_throttled_requests_total{export="slow"}', text)

    # --- QoS groups ---

    def test_group_create_list_get_update_delete(self):
        got = self.ctl_json("qos-group", "create", "g1", *ALL_FLAGS)
        self.assertEqual(got["name"], "qosGroups/g1")
        self.assertEqual(limits(got["limits"]), ALL_LIMITS)
        self.assertTrue(got["persistent"])
        self.assertEqual(got.get("exports", []), [])
        self.assertEqual(int(got["throttled_requests"]), 0)
        self.assertEqual(limits(self.group("g1")["limits"]), ALL_LIMITS)
        # A group without limits.
        got = self.ctl_json("qos-group", "create", "empty")
        self.assertEqual(limits(got.get("limits")), {})
        groups = self.groups()
        self.assertEqual(sorted(groups), ["daemon-g", "empty", "g1"])
        self.assertFalse(groups["daemon-g"]["persistent"])
        self.assertEqual(groups["daemon-g"]["exports"], ["exports/cli"])
        self.assertEqual(limits(groups["daemon-g"]["limits"]),
                         {"iops_total": (200000, 0), "bps_total": (4 * GiB, 0)})
        # Tables.
        out = self.ctl("qos-group", "list").stdout
        self.assertEqual(self.group_row(out, "daemon-g")[1:6],
                         ["daemon", "1", "0", "0.000", "0"])
        self.assertEqual(self.group_row(out, "daemon-g")[6],
                         "iops=200000,bandwidth=4GiB")
        self.assertEqual(self.group_row(out, "empty")[1:], ["api", "0", "0", "0.000",
                                                             "0", "none"])
        self.assertIn("daemon-g: exports cli\n", out)
        out = self.ctl("qos-group", "get", "g1").stdout
        self.assertEqual(self.group_row(out, "g1")[1], "api")
        self.assertEqual(len(out.splitlines()), 2, out)
        # update: narrow, like the exports'.
        got = self.ctl_json("qos-group", "update", "g1", "--iops", "9000")
        want = dict(ALL_LIMITS, iops_total=(9000, 500))
        self.assertEqual(limits(got["limits"]), want)
        got = self.ctl_json("qos-group", "update", "g1", "--bandwidth-read-burst", "1MiB",
                            "--iops-write", "0")
        want["bps_read"] = (100 * MiB, MiB)
        del want["iops_write"]
        self.assertEqual(limits(got["limits"]), want)
        self.assertEqual(limits(self.group("g1")["limits"]), want)
        got = self.ctl_json("qos-group", "update", "empty", "--iops-read", "7")
        self.assertEqual(limits(got["limits"]), {"iops_read": (7, 0)})
        # A group given to the daemon can be tuned too.
        got = self.ctl_json("qos-group", "update", "daemon-g", "--bandwidth", "8GiB")
        self.assertEqual(limits(got["limits"]), {"iops_total": (200000, 0),
                                                 "bps_total": (8 * GiB, 0)})
        # delete
        self.assertEqual(self.ctl("qos-group", "delete", "g1").stdout,
                         "deleted QoS group g1\n")
        self.assertEqual(self.ctl_json("qos-group", "delete", "empty"), {})
        self.assertEqual(sorted(self.groups()), ["daemon-g"])
        self.fails("NOT_FOUND", "qos-group", "get", "g1")

    def test_exports_join_and_leave_groups(self):
        self.ctl("qos-group", "create", "g1", "--iops", "1000")
        self.ctl("qos-group", "create", "g2", "--bandwidth", "100MiB")
        got = self.create("vm1", "--qos-group", "g1", "--iops-read", "10")
        self.assertEqual(got["qos_group"], "qosGroups/g1")
        self.assertEqual(limits(got["qos"]), {"iops_read": (10, 0)})
        self.create("vm2", "--qos-group", "g1")
        self.assertEqual(self.group("g1")["exports"], ["exports/vm1", "exports/vm2"])
        self.assertIn("vm1: QoS limits iops-read=10, group g1\n",
                      self.ctl("get", "vm1").stdout)
        self.assertIn("vm2: QoS limits none, group g1\n", self.ctl("get", "vm2").stdout)
        # Move: the limits stay.
        got = self.ctl_json("update", "vm1", "--qos-group", "g2")
        self.assertEqual(got["qos_group"], "qosGroups/g2")
        self.assertEqual(limits(got["qos"]), {"iops_read": (10, 0)})
        self.assertEqual(self.group("g1")["exports"], ["exports/vm2"])
        self.assertEqual(self.group("g2")["exports"], ["exports/vm1"])
        # Leave with "".
        got = self.ctl_json("update", "vm2", "--qos-group", "")
        self.assertEqual(got["qos_group"], "")
        self.assertEqual(self.group("g1").get("exports", []), [])
        self.assertNotIn("vm2: QoS", self.ctl("get", "vm2").stdout)
        # A command-line export can change groups too.
        got = self.ctl_json("update", "cli", "--qos-group", "g1")
        self.assertEqual(got["qos_group"], "qosGroups/g1")
        self.assertEqual(self.group("daemon-g").get("exports", []), [])
        self.ctl("update", "cli", "--qos-group", "daemon-g")
        self.assertEqual(self.group("daemon-g")["exports"], ["exports/cli"])
        # Members counted in the stats.
        stats = self.ctl_json("stats")
        members = {g["name"]: int(g["members"]) for g in stats["qos_groups"]}
        self.assertEqual(members, {"qosGroups/daemon-g": 1, "qosGroups/g1": 0,
                                   "qosGroups/g2": 1})

    # --- errors ---

    def test_errors_have_codes_and_change_nothing(self):
        self.ctl("qos-group", "create", "g1", "--iops", "1000")
        self.create("vm1", "--qos-group", "g1")
        exports, groups = ["cli", "mem", "vm1"], ["daemon-g", "g1"]
        # Unknown groups.
        for args in (["qos-group", "get", "nope"],
                     ["qos-group", "update", "nope", "--iops", "1"],
                     ["qos-group", "delete", "nope"]):
            self.assertIn("nope", self.fails("NOT_FOUND", *args))
        self.assertIn("nope", self.fails("NOT_FOUND", "create", "vm2", "--memory", "1MiB",
                                         "--qos-group", "nope"))
        self.assertIn("nope", self.fails("NOT_FOUND", "update", "vm1", "--qos-group", "nope"))
        self.assertEqual(self.export("vm1")["qos_group"], "qosGroups/g1")
        # A group with members cannot be deleted; the message names them.
        message = self.fails("FAILED_PRECONDITION", "qos-group", "delete", "g1")
        self.assertIn("vm1", message)
        message = self.fails("FAILED_PRECONDITION", "qos-group", "delete", "daemon-g")
        self.assertIn("cli", message)
        # Taken names.
        self.fails("ALREADY_EXISTS", "qos-group", "create", "g1")
        self.fails("ALREADY_EXISTS", "qos-group", "create", "daemon-g")
        # Bad limits: a burst without a rate, out of range.
        # Out of range: nbdctl refuses before sending anything.
        for args in (["create", "vm2", "--memory", "1MiB", "--bandwidth", "2TiB"],
                     ["create", "vm2", "--memory", "1MiB", "--iops", "2000000000000"],
                     ["qos-group", "create", "g2", "--bandwidth-write", "2TiB"]):
            self.assertIn("out of range", self.usage_error(*args))
        for args in (["create", "vm2", "--memory", "1MiB", "--iops-burst", "10"],
                     ["update", "vm1", "--bandwidth-read-burst", "1MiB"],
                     ["update", "vm1", "--iops", "0", "--iops-burst", "3"],
                     ["qos-group", "create", "g2", "--iops-write-burst", "5"],
                     ["qos-group", "update", "g1", "--iops", "0", "--iops-burst", "5"],
                     ["qos-group", "update", "g1", "--bandwidth-burst", "1MiB"]):
            message = self.fails("INVALID_ARGUMENT", *args)
            self.assertRegex(message, "iops|bandwidth", args)
        self.assertIn("iops burst needs", self.fails(
            "INVALID_ARGUMENT", "qos-group", "create", "g2", "--iops-burst", "5"))
        # Bad names.
        for name in ("a/b", "has space", "x" * 129, ".dot"):
            self.fails("INVALID_ARGUMENT", "qos-group", "create", name)
            self.fails("INVALID_ARGUMENT", "qos-group", "get", name)
            self.fails("INVALID_ARGUMENT", "create", "vm2", "--memory", "1MiB",
                       "--qos-group", name)
            self.fails("INVALID_ARGUMENT", "update", "vm1", "--qos-group", name)
        self.nothing_changed(exports, groups)
        self.assertEqual(limits(self.group("g1")["limits"]), {"iops_total": (1000, 0)})
        self.assertEqual(limits(self.export("vm1").get("qos")), {})
        self.assertEqual(self.export("vm1")["qos_group"], "qosGroups/g1")
        # Once its export has left, the group goes.
        self.ctl("update", "vm1", "--qos-group", "")
        self.ctl("qos-group", "delete", "g1")

    def test_usage_errors_send_nothing(self):
        self.ctl("qos-group", "create", "g1")
        for flag in FLAG_FIELD:
            for suffix in ("", "-burst"):
                for value in ("lots", "-1", "1.5x", ""):
                    for cmd in (["create", "vm2", "--memory", "1MiB"],
                                ["update", "mem"],
                                ["qos-group", "create", "g2"],
                                ["qos-group", "update", "g1"]):
                        line = self.usage_error(*cmd, flag + suffix, value)
                        self.assertIn(f"{flag}{suffix}", line, (cmd, value))
        self.assertIn("operations per second",
                      self.usage_error("update", "mem", "--iops", "10k"))
        self.assertEqual(self.usage_error("qos-group", "update", "g1"),
                         "nbdctl: nothing to update")
        self.assertIn("qos-group", self.usage_error("qos-group"))
        self.assertIn("frobnicate", self.usage_error("qos-group", "frobnicate"))
        for command in ("create", "get", "update", "delete"):
            self.assertIn("NAME", self.usage_error("qos-group", command))
        self.assertEqual(self.usage_error("qos-group", "get", "g1", "extra"),
                         "nbdctl: unexpected argument extra")
        self.assertEqual(self.usage_error("qos-group", "list", "--frobnicate"),
                         "nbdctl: unknown flag --frobnicate")
        self.assertIn("--iops", self.usage_error("qos-group", "create", "g2", "--iops"))
        self.assertIn("-o must be table or json",
                      self.usage_error("qos-group", "list", "-o", "prometheus"))
        self.nothing_changed(["cli", "mem"], ["daemon-g", "g1"])
        self.assertEqual(limits(self.export("mem").get("qos")), {})

    def test_help(self):
        p = run(NBDCTL, "--help")
        self.assertIn("qos-group", p.stdout)
        for command in ("create", "update"):
            p = run(NBDCTL, command, "--help")
            for word in ("--iops N", "--iops-read N", "--iops-write N", "--iops-burst N",
                         "--iops-read-burst N", "--iops-write-burst N",
                         "--bandwidth SIZE", "--bandwidth-read SIZE",
                         "--bandwidth-write SIZE", "--bandwidth-burst SIZE",
                         "--bandwidth-read-burst SIZE", "--bandwidth-write-burst SIZE",
                         "--qos-group NAME"):
                self.assertIn(word, p.stdout, (command, word))
        p = run(NBDCTL, "qos-group", "--help")
        self.assertTrue(p.stdout.startswith("Usage: nbdctl qos-group "), p.stdout)
        for command in ("create", "list", "get", "update", "delete"):
            self.assertIn(command, p.stdout)
        for command in ("create", "list", "get", "update", "delete"):
            for args in (["qos-group", command, "--help"],
                         ["--help", "qos-group", command]):
                p = run(NBDCTL, *args)
                self.assertTrue(p.stdout.startswith(f"Usage: nbdctl qos-group {command}"),
                                p.stdout)
                self.assertIn("--control ADDR", p.stdout)
        for command in ("create", "update"):
            p = run(NBDCTL, "qos-group", command, "--help")
            self.assertIn("--bandwidth-write-burst SIZE", p.stdout)
            self.assertNotIn("--qos-group NAME", p.stdout)

    # --- the API's update masks ---

    def test_update_masks_through_raw_grpc(self):
        grpc, pb, call = grpc_api(self.d.control)
        e, q = pb.export, pb.qos

        def update(mask, **fields):
            req = e.UpdateExportRequest(export=e.Export(name="exports/cli", **fields))
            req.update_mask.paths.extend(mask)
            return call("ExportService", "UpdateExport", req, e.Export)

        def code_of(fn, *args, **kw):
            try:
                fn(*args, **kw)
            except grpc.RpcError as err:
                return err.code(), err.details()
            return grpc.StatusCode.OK, ""

        def lim(msg):
            return {f: (getattr(msg, f).rate, getattr(msg, f).burst) for f in FIELDS
                    if getattr(msg, f).rate}

        base = {"iops_total": (100000, 0), "bps_write": (GiB, 64 * MiB)}
        new = e.QosLimits(iops_read=e.RateLimit(rate=10, burst=2),
                          bps_total=e.RateLimit(rate=MiB))
        # "qos.<limit>.rate" and ".burst": one number.
        got = update(["qos.iops_total.rate"], qos=e.QosLimits(
            iops_total=e.RateLimit(rate=7, burst=99)))
        self.assertEqual(lim(got.qos), dict(base, iops_total=(7, 0)))
        got = update(["qos.iops_total.burst"], qos=e.QosLimits(
            iops_total=e.RateLimit(rate=99, burst=3)))
        self.assertEqual(lim(got.qos), dict(base, iops_total=(7, 3)))
        # "qos.<limit>": rate and burst.
        got = update(["qos.bps_write"], qos=e.QosLimits(bps_write=e.RateLimit(rate=5)))
        self.assertEqual(lim(got.qos), {"iops_total": (7, 3), "bps_write": (5, 0)})
        got = update(["qos.iops_read", "qos.bps_total"], qos=new)
        self.assertEqual(lim(got.qos), {"iops_total": (7, 3), "iops_read": (10, 2),
                                        "bps_total": (MiB, 0), "bps_write": (5, 0)})
        # "qos": all six (the unset ones are removed).
        got = update(["qos"], qos=new)
        self.assertEqual(lim(got.qos), {"iops_read": (10, 2), "bps_total": (MiB, 0)})
        got = update(["qos"])
        self.assertEqual(lim(got.qos), {})
        # "qos_group": a resource name, a bare id, or "".
        self.assertEqual(update(["qos_group"]).qos_group, "")
        self.assertEqual(update(["qos_group"], qos_group="daemon-g").qos_group,
                         "qosGroups/daemon-g")
        self.assertEqual(update(["qos_group"], qos_group="").qos_group, "")
        self.assertEqual(update(["qos_group"], qos_group="qosGroups/daemon-g").qos_group,
                         "qosGroups/daemon-g")
        # Unknown paths list the valid ones.
        for path in ("qos.iops", "qos.iops_total.rates", "qos.iops_total.rate.x", "qos.",
                     "qosx", "qos_groups", "qos_group.name"):
            code, details = code_of(update, [path])
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, path)
            self.assertIn(f'field "{path}" cannot be updated', details)
            self.assertIn("qos.LIMIT.rate", details)
            self.assertIn("qos_group", details)
            self.assertIn("bps_write", details)
        code, details = code_of(update, [])
        self.assertIn("qos.LIMIT.burst", details)
        code, _ = code_of(update, ["qos_group"], qos_group="exports/x")
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        code, _ = code_of(update, ["qos.iops_read.burst"],
                          qos=e.QosLimits(iops_read=e.RateLimit(burst=5)))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)  # no rate

        # QosService: names, masks.
        def group_update(mask, name="qosGroups/daemon-g", **limits):
            req = q.UpdateQosGroupRequest(qos_group=q.QosGroup(
                name=name, limits=e.QosLimits(**limits)))
            req.update_mask.paths.extend(mask)
            return call("QosService", "UpdateQosGroup", req, q.QosGroup)

        got = group_update(["limits.iops_total.burst"],
                           iops_total=e.RateLimit(rate=1, burst=50))
        self.assertEqual(lim(got.limits), {"iops_total": (200000, 50),
                                           "bps_total": (4 * GiB, 0)})
        got = group_update(["limits.iops_write", "limits.bps_total.rate"],
                           iops_write=e.RateLimit(rate=8, burst=4),
                           bps_total=e.RateLimit(rate=GiB, burst=1))
        self.assertEqual(lim(got.limits), {"iops_total": (200000, 50),
                                           "iops_write": (8, 4), "bps_total": (GiB, 0)})
        got = group_update(["limits"], bps_read=e.RateLimit(rate=3))
        self.assertEqual(lim(got.limits), {"bps_read": (3, 0)})
        for path in ("limits.iops", "qos.iops_total", "name", "limits.bps_read.x"):
            code, details = code_of(group_update, [path])
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, path)
            self.assertIn(f'field "{path}" cannot be updated', details)
            self.assertIn("limits.LIMIT.rate", details)
        code, details = code_of(group_update, [])
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("update_mask is required", details)
        # Resource names: "qosGroups/{group}" only.
        code, _ = code_of(group_update, ["limits"], name="daemon-g")
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        for name in ("daemon-g", "exports/daemon-g", "qosGroups/", "qosGroups/a/b"):
            code, _ = code_of(call, "QosService", "GetQosGroup",
                              q.GetQosGroupRequest(name=name), q.QosGroup)
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, name)
            code, _ = code_of(call, "QosService", "DeleteQosGroup",
                              q.DeleteQosGroupRequest(name=name), q.DeleteQosGroupResponse)
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, name)
        # Create takes the id; the name in the message is ignored.
        got = call("QosService", "CreateQosGroup", q.CreateQosGroupRequest(
            qos_group_id="raw", qos_group=q.QosGroup(
                name="qosGroups/other", limits=e.QosLimits(iops_total=e.RateLimit(rate=1)))),
            q.QosGroup)
        self.assertEqual(got.name, "qosGroups/raw")
        self.assertTrue(got.persistent)
        code, _ = code_of(call, "QosService", "CreateQosGroup",
                          q.CreateQosGroupRequest(qos_group_id="qosGroups/x"), q.QosGroup)
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        listed = call("QosService", "ListQosGroups", q.ListQosGroupsRequest(),
                      q.ListQosGroupsResponse)
        self.assertEqual([g.name for g in listed.qos_groups],
                         ["qosGroups/daemon-g", "qosGroups/raw"])

    def test_served_like_the_other_services(self):
        # GetQosGroupRequest{name: "\xff\xfe"}: not UTF-8.
        self.assert_served_like_the_others("QosService", "GetQosGroup", b"\x0a\x02\xff\xfe")

    # --- persistence ---

    def test_api_groups_and_export_limits_survive_a_clean_restart(self):
        self.ctl("qos-group", "create", "g1", "--iops", "1000", "--iops-burst", "100")
        self.ctl("qos-group", "update", "g1", "--bandwidth-write", "10MiB")
        self.ctl("qos-group", "create", "gone")
        self.ctl("qos-group", "delete", "gone")
        self.create("vm1", "--iops-read", "500", "--bandwidth", "20MiB", "--qos-group", "g1")
        self.ctl("update", "vm1", "--bandwidth-burst", "2MiB")
        self.create("vm2", "--qos-group", "g1")
        self.ctl("update", "vm2", "--qos-group", "")
        # Changes to a daemon group last until the daemon stops.
        self.ctl("qos-group", "update", "daemon-g", "--iops", "1")
        self.assertEqual(self.d.stop(), 0, self.d.logs())
        self.d.start()
        groups = self.groups()
        self.assertEqual(sorted(groups), ["daemon-g", "g1"])
        self.assertTrue(groups["g1"]["persistent"])
        self.assertEqual(limits(groups["g1"]["limits"]), {"iops_total": (1000, 100),
                                                          "bps_write": (10 * MiB, 0)})
        self.assertEqual(groups["g1"]["exports"], ["exports/vm1"])
        self.assertEqual(limits(groups["daemon-g"]["limits"]),
                         {"iops_total": (200000, 0), "bps_total": (4 * GiB, 0)})
        vm1 = self.export("vm1")
        self.assertEqual(limits(vm1["qos"]), {"iops_read": (500, 0),
                                              "bps_total": (20 * MiB, 2 * MiB)})
        self.assertEqual(vm1["qos_group"], "qosGroups/g1")
        self.assertEqual(self.export("vm2")["qos_group"], "")
        # Still a member: it cannot be deleted, then it can.
        self.fails("FAILED_PRECONDITION", "qos-group", "delete", "g1")
        self.ctl("remove", "vm1")
        self.ctl("qos-group", "delete", "g1")
        self.assertEqual(self.d.stop(), 0, self.d.logs())
        self.d.start()
        self.assertEqual(sorted(self.groups()), ["daemon-g"])

    def test_check_config_finds_groups_saved_in_the_state_dir(self):
        # --check-config answers as the start would: a group saved over the
        # API is found in the state directory; one nowhere is named; a
        # corrupt file of saved groups is named and left as it was.
        self.ctl("qos-group", "create", "saved", "--iops", "100")
        self.assertEqual(self.d.stop(), 0, self.d.logs())
        state = self.d.state_dir

        def check(group, state_dir=state):
            return subprocess.run(
                [NBDMGRD, "--state-dir", state_dir, "--check-config", "--export",
                 f"name=x,backend=memory,size=1M,qos-group={group}"],
                capture_output=True, text=True, timeout=30)

        p = check("saved")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("QoS group saved", p.stdout)
        p = check("daemon-g")  # given only on the daemon's own command line
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn('export x: QoS group "daemon-g" does not exist', p.stderr)
        self.assertIn(os.path.join(state, "qos-groups.textproto"), p.stderr)
        p = check("saved", state_dir=os.path.join(self.d.dir, "no-such-dir"))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn('QoS group "saved" does not exist', p.stderr)
        path = os.path.join(state, "qos-groups.textproto")
        with open(path) as f:
            saved = f.read()
        with open(path, "w") as f:
            f.write("groups { bogus")
        p = check("saved")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("could not be read", p.stderr)
        self.assertIn(path, p.stderr)
        with open(path) as f:
            self.assertEqual(f.read(), "groups { bogus")
        with open(path, "w") as f:
            f.write(saved)
        self.d.start()
        self.assertEqual(limits(self.groups()["saved"]["limits"]), {"iops_total": (100, 0)})


class QosDaemonConfigTest(unittest.TestCase):
    """--qos-group and the config file's qos_groups."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nbdmgr-qos-")
        self.addCleanup(subprocess.run, ["rm", "-rf", self.dir])

    def nbdmgrd(self, *args):
        return subprocess.run([NBDMGRD, *args], capture_output=True, text=True, timeout=30)

    def conf(self, text):
        path = os.path.join(self.dir, "nbdmgrd.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_bad_specs_exit_2_naming_the_problem(self):
        cases = [
            (["--qos-group", "iops=5"], "--qos-group: QoS group spec \"iops=5\": missing name="),
            (["--qos-group", "name=g,iops=lots"], "--qos-group: QoS group key iops:"),
            (["--qos-group", "name=g,bandwidth=1Q"], "--qos-group: QoS group key bandwidth:"),
            (["--qos-group", "name=g,iops-burst=5"], "iops burst needs a rate (iops is not set)"),
            (["--qos-group", "name=a/b"], "QoS group name \"a/b\""),
            (["--qos-group", "name=g,size=1G"], "unknown key \"size\""),
            (["--qos-group", "name=g", "--qos-group", "name=g"],
             "QoS group \"g\" is declared twice"),
            (["--export", "name=x,backend=memory,size=1M,iops=fast"],
             "--export: export key iops:"),
            (["--export", "name=x,backend=memory,size=1M,bandwidth-write-burst=1M"],
             "bandwidth-write burst needs"),
            (["--export", "name=x,backend=memory,size=1M,qos-group=a/b"],
             "QoS group name"),
        ]
        for args, message in cases:
            for extra in ([], ["--check-config"]):
                p = self.nbdmgrd(*args, *extra)
                self.assertEqual(p.returncode, 2, (args, p.stderr))
                self.assertIn(message, p.stderr, args)

    def test_an_export_naming_an_unknown_group_exits_1_naming_it(self):
        # The group could come from the state directory (created over the
        # API): --check-config and the start look there.
        p = self.nbdmgrd("--export", "name=a,backend=memory,size=1M,qos-group=nope",
                         "--state-dir", "none", "--check-config")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn('export a: QoS group "nope" does not exist', p.stderr)
        p = self.nbdmgrd("--export", "name=a,backend=memory,size=1M,qos-group=nope",
                         "--nbd-listen", "tcp:127.0.0.1:0", "--control-listen", "none",
                         "--metrics-listen", "none", "--state-dir", "none")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn('QoS group "nope"', p.stderr)

    def test_bad_config_file_groups_exit_2_naming_them(self):
        cases = [
            ('qos_groups { name: "a b" }\n', "qos_groups[0] (\"a b\")"),
            ('qos_groups { name: "ok" }\nqos_groups { name: "g" limits { iops_read '
             '{ burst: 1 } } }\n', "qos_groups[1] (\"g\"): QoS group g: iops-read burst"),
            ('qos_groups { name: "g" }\nqos_groups { name: "qosGroups/g" }\n',
             "QoS group \"g\" is declared twice"),
            ('qos_groups { name: "g" limits { bogus: 1 } }\n', "line 1"),
        ]
        for text, message in cases:
            p = self.nbdmgrd("--config", self.conf(text), "--check-config")
            self.assertEqual(p.returncode, 2, (text, p.stderr))
            self.assertIn(message, p.stderr, text)
            self.assertIn("nbdmgrd.conf", p.stderr)
        # A flag naming a group of the file is a duplicate.
        p = self.nbdmgrd("--config", self.conf('qos_groups { name: "g" }\n'),
                         "--qos-group", "name=g", "--check-config")
        self.assertEqual(p.returncode, 2)
        self.assertIn("QoS group \"g\" is declared twice", p.stderr)

    def test_config_file_and_flags_add_up(self):
        path = self.conf('''
            qos_groups {
              name: "qosGroups/file-g"
              limits { iops_total { rate: 300 burst: 30 } bps_read { rate: 1048576 } }
            }
            exports {
              name: "a"
              memory { size_bytes: 1048576 }
              qos { iops_write { rate: 40 } }
              qos_group: "file-g"
            }
        ''')
        p = self.nbdmgrd("--config", path, "--qos-group", "name=flag-g,bandwidth=1GiB",
                         "--check-config")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("qos group: file-g (iops=300,iops-burst=30,bandwidth-read=1MiB)",
                      p.stdout)
        self.assertIn("qos group: flag-g (bandwidth=1GiB)", p.stdout)
        self.assertIn("export: a (memory 1MiB, iops-write=40, QoS group file-g, default)",
                      p.stdout)
        d = Daemon(["name=b,backend=memory,size=1MiB,qos-group=flag-g"],
                   extra=["--config", path, "--qos-group", "name=flag-g,bandwidth=1GiB"])
        self.addCleanup(d.cleanup)
        d.start()
        groups = json.loads(d.nbdctl("-o", "json", "qos-group", "list").stdout)["qos_groups"]
        self.assertEqual([g["name"] for g in groups], ["qosGroups/file-g", "qosGroups/flag-g"])
        self.assertEqual(limits(groups[0]["limits"]), {"iops_total": (300, 30),
                                                       "bps_read": (MiB, 0)})
        self.assertEqual(groups[0]["exports"], ["exports/a"])
        self.assertFalse(groups[0]["persistent"])
        self.assertEqual(limits(groups[1]["limits"]), {"bps_total": (GiB, 0)})
        self.assertEqual(groups[1]["exports"], ["exports/b"])
        a = json.loads(d.nbdctl("-o", "json", "get", "a").stdout)
        self.assertEqual(limits(a["qos"]), {"iops_write": (40, 0)})
        # Served.
        h = connect(d.uri("b"))
        h.pwrite(b"y" * 4096, 0)
        self.assertEqual(h.pread(4096, 0), b"y" * 4096)
        h.shutdown()
        self.assertEqual(d.stop(), 0, d.logs())


if __name__ == "__main__":
    unittest.main()
