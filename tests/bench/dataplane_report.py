#!/usr/bin/python3
"""Tables for tests/bench/dataplane.sh: medians over rounds of what
lib.sh's dp_matrix wrote (results.tsv, syscalls.tsv), the ratio of the first
server to each of the others, and the issue-16 targets that apply to the
run's mode."""
import argparse
import math
import statistics
from collections import defaultdict

ROWS = ["read-1m-1", "read-1m-4", "write-1m-1", "write-1m-4", "randread-4k-1",
        "randread-4k-4", "randwrite-4k-1", "randwrite-4k-4", "copy-up", "copy-down"]


def median(vals):
    vals = [v for v in vals if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def ratio(a, b):
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan


def fmt(v, digits=1):
    if math.isnan(v):
        return "nan"
    return f"{v:.{digits}f}" if abs(v) < 10000 else f"{v:.0f}"


def is_4k(row):
    return "-4k-" in row


def unit(row):
    return "IOPS" if is_4k(row) else "MB/s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--syscalls", required=True)
    ap.add_argument("--servers", required=True, help="comma-separated; first is compared")
    ap.add_argument("--mode", default="", help="memory, file, tls or baseline: which targets apply")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    servers = args.servers.split(",")
    me, peers = servers[0], servers[1:]

    value = defaultdict(list)   # (transport, row, server) -> MB/s or IOPS
    cpu = defaultdict(list)     # (transport, row, server) -> server CPU us/request
    rounds = set()
    for line in open(args.results):
        f = line.rstrip("\n").split("\t")
        if len(f) < 8:
            continue
        rnd, t, row, s, mbps, iops, reqs, cpu_us = f
        rounds.add(rnd)
        key = (t, row, s)
        value[key].append(float(iops) if is_4k(row) else float(mbps))
        n = int(reqs)
        cpu[key].append(int(cpu_us) / n if n else math.nan)
    keys = sorted({(t, row) for t, row, _ in value},
                  key=lambda k: (["unix", "tcp"].index(k[0]) if k[0] in ("unix", "tcp") else 9,
                                 ROWS.index(k[1]) if k[1] in ROWS else 99))
    med = {k: median(v) for k, v in value.items()}
    cmed = {k: median(v) for k, v in cpu.items()}

    def table(title, data, digits, note):
        head = f"{'transport':<9} {'job':<15} {'unit':<5} {me:>10}"
        for p in peers:
            head += f" {p:>10} {'ratio':>6}"
        print(f"\n{title}\n{head}")
        for t, row in keys:
            m = data.get((t, row, me), math.nan)
            line = f"{t:<9} {row:<15} {(unit(row) if digits is None else 'us'):<5} {fmt(m, digits or 1):>10}"
            for p in peers:
                v = data.get((t, row, p), math.nan)
                line += f" {fmt(v, digits or 1):>10} {fmt(ratio(m, v), 3):>6}"
            print(line)
        print(note)

    if keys:
        table("throughput (higher is better; ratio = %s / peer)" % me, med, None,
              f"({args.note}; medians of {len(rounds)} rounds)")
        table("server CPU per request, microseconds (lower is better; ratio = %s / peer)" % me,
              cmed, 2, "(utime+stime of the server process(es) from /proc/PID/stat over the "
                       "job / requests done; 1m rows: 1 MiB requests, copy rows: 256 KiB)")

    sc = defaultdict(list)            # (transport, row, server) -> calls/request per pass
    sc_names = defaultdict(lambda: defaultdict(int))
    sc_reqs = defaultdict(int)
    sc_total = defaultdict(list)
    for line in open(args.syscalls):
        f = line.rstrip("\n").split("\t")
        if len(f) < 6:
            continue
        rnd, t, row, s, reqs, total = f[:6]
        key = (t, row, s)
        n = int(reqs)
        sc[key].append(int(total) / n if n else math.nan)
        sc_reqs[key] += n
        sc_total[key].append(int(total))
        for kv in f[6:]:
            name, c = kv.rsplit("=", 1)
            sc_names[key][name] += int(c)
    scmed = {k: median(v) for k, v in sc.items()}
    if sc:
        sc_keys = sorted({(t, row) for t, row, _ in sc}, key=lambda k: ROWS.index(k[1]))
        print("\nsystem calls per request (perf stat -e raw_syscalls:sys_enter on the server, "
              "a separate pass; medians)")
        print(f"{'transport':<9} {'job':<15} " + " ".join(f"{s:>10}" for s in servers))
        for t, row in sc_keys:
            print(f"{t:<9} {row:<15} " +
                  " ".join(f"{fmt(scmed.get((t, row, s), math.nan), 3):>10}" for s in servers))
        print("top calls per request (all passes summed):")
        for t, row in sc_keys:
            for s in servers:
                key = (t, row, s)
                if not sc_reqs.get(key):
                    continue
                n = sc_reqs[key]
                top = [(name, c / n) for name, c in
                       sorted(sc_names[key].items(), key=lambda kv: -kv[1])
                       if c / n >= 0.01][:6]
                other = (sum(sc_total[key]) - sum(sc_names[key].values())) / n
                if other >= 0.01:
                    top.append(("other", other))
                print(f"  {t} {row} {s}: " + ", ".join(f"{name} {v:.3f}" for name, v in top))
        print("(tracing slows every server down; these passes are not in the throughput table)")

    # The issue-16 targets that apply to this mode.
    checks = []  # (description, [(label, ratio-or-value)], predicate)
    def rows_vs(peer, table, pred_rows):
        return [(f"{t} {row}", ratio(table.get((t, row, me), math.nan),
                                     table.get((t, row, peer), math.nan)))
                for t, row in keys if pred_rows(row) and (t, row, peer) in table]
    if args.mode == "file":
        for p in ("qsd", "nbdkit"):
            if p in peers:
                checks.append((f"every file row >= 1.0x {p}", rows_vs(p, med, lambda r: True),
                               lambda v: v >= 1.0))
        if "qsd" in peers:
            checks.append(("CPU per 4 KiB request <= 0.7x qsd's",
                           rows_vs("qsd", cmed, is_4k), lambda v: v <= 0.7))
    elif args.mode == "memory" and "nbdkit" in peers:
        checks.append(("every memory 4 KiB row >= 1.25x nbdkit",
                       rows_vs("nbdkit", med, is_4k), lambda v: v >= 1.25))
        checks.append(("CPU per 4 KiB request <= 0.5x nbdkit's",
                       rows_vs("nbdkit", cmed, is_4k), lambda v: v <= 0.5))
    elif args.mode == "tls" and "nbdkit" in peers:
        checks.append(("every TLS row >= 1.0x nbdkit", rows_vs("nbdkit", med, lambda r: True),
                       lambda v: v >= 1.0))
    if args.mode in ("file", "memory", "tls") and sc:
        checks.append((f"{me} system calls per request <= 0.5",
                       [(f"{t} {row}", v) for (t, row, s), v in sorted(scmed.items())
                        if s == me], lambda v: v <= 0.5))
    if checks:
        print("\ntargets (issue 16):")
        for desc, vals, pred in checks:
            if not vals:
                continue
            missed = [(k, v) for k, v in vals if math.isnan(v) or not pred(v)]
            if not missed:
                print(f"  met     {desc} ({len(vals)} rows)")
            else:
                print(f"  MISSED  {desc}: {len(missed)} of {len(vals)} rows: " +
                      ", ".join(f"{k} {fmt(v, 3)}" for k, v in missed))


if __name__ == "__main__":
    main()
