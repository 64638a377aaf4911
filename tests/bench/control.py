#!/usr/bin/python3
"""Control-plane benchmark: one client creates and removes memory exports
through the gRPC API while fio reads an unrelated export.

Reports, for 1,000 create+delete pairs back to back (the issue's workload):
per-call latency (p50/p99/max), the daemon's and the client's CPU time per
call, and the fio throughput of the unrelated export alone vs during the
churn. The same churn is then run paced (--rates pairs per second), to show
the data-plane cost per call at an operational rate. With --other-daemon,
every churn also runs against a second nbdmgrd, which shares nothing with the
daemon fio reads from but the machine. Rounds alternate "fio
alone" and "fio + churn"; medians are reported.

Usage: tests/bench/control.py [BUILD_DIR] [--exports 1000] [--rounds 3]
                              [--rates 50,200] [--other-daemon]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
from nbdmgr_fixture import Daemon  # noqa: E402
from test_control import raw_api  # noqa: E402


def fio_mbps(uri, seconds):
    out = subprocess.run(
        ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", "--rw=read", "--bs=1M",
         "--iodepth=8", "--size=1G", "--time_based", f"--runtime={seconds}",
         "--output-format=json"], capture_output=True, text=True).stdout
    j = json.loads(out[out.index("{"):])["jobs"][0]
    return j["read"]["bw_bytes"] / 1e6


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("build", nargs="?", default=os.path.join(HERE, "..", "..", "build"))
    p.add_argument("--exports", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rates", default="50,200",
                   help="paced runs, create+delete pairs per second")
    p.add_argument("--other-daemon", action="store_true",
                   help="also churn a second daemon while fio reads the first")
    args = p.parse_args()
    import nbdmgr_fixture
    nbdmgr_fixture.NBDMGRD = os.path.join(args.build, "daemon", "nbdmgrd")
    d = Daemon(["name=data,backend=memory,size=1GiB"], extra=["--log-level", "warn"])
    d.start()
    other = None
    if args.other_daemon:
        other = Daemon([], extra=["--log-level", "warn"])
        other.start()
    try:
        subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri={d.uri('data')}",
                        "--rw=write", "--bs=1M", "--size=1G"], capture_output=True)
        _, pb, call_same = raw_api(d.control)
        call_other = raw_api(other.control)[2] if other else None
        create_ms, delete_ms = [], []

        def pair(i, record, call=call_same):
            name = f"bench{i % args.exports}"
            t0 = time.perf_counter()
            call("CreateExport", pb.CreateExportRequest(
                export_id=name, export=pb.Export(memory=pb.MemoryBackend(size_bytes=1 << 20))),
                pb.Export)
            t1 = time.perf_counter()
            call("DeleteExport", pb.DeleteExportRequest(name=f"exports/{name}"),
                 pb.DeleteExportResponse)
            t2 = time.perf_counter()
            if record:
                create_ms.append((t1 - t0) * 1e3)
                delete_ms.append((t2 - t1) * 1e3)

        # The cost of one call, with nothing else running.
        s0, c0, w0 = cpu_seconds(d.proc.pid), time.process_time(), time.perf_counter()
        for i in range(args.exports):
            pair(i, record=True)
        calls = 2 * args.exports
        wall = time.perf_counter() - w0
        server_us = (cpu_seconds(d.proc.pid) - s0) / calls * 1e6
        client_us = (time.process_time() - c0) / calls * 1e6

        def churn(stop, rate, counter, call):
            # Back to back (rate 0) or paced; at least --exports pairs, and
            # for as long as fio runs.
            i, t0 = 0, time.perf_counter()
            while not stop.is_set() or i < args.exports:
                if rate:
                    delay = t0 + i / rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                pair(i, record=rate == 0 and call is call_same, call=call)
                i += 1
            counter.append((2 * i, time.perf_counter() - t0))

        results = {}
        rates = [0] + [int(r) for r in args.rates.split(",") if r]
        targets = [("", call_same)] + ([(", other", call_other)] if other else [])
        runs = [((f"paced, {r} pairs/s" if r else "back to back") + suffix, r, call)
                for suffix, call in targets for r in rates]
        for label, rate, call in runs:
            alone, busy, rates = [], [], []
            for round_ in range(args.rounds):
                # Alternate which goes first, so drift within a round does
                # not read as an effect of the churn.
                if round_ % 2 == 0:
                    alone.append(fio_mbps(d.uri("data"), 8))
                stop, counter = threading.Event(), []
                t = threading.Thread(target=churn, args=(stop, rate, counter, call))
                t.start()
                busy.append(fio_mbps(d.uri("data"), 8))
                stop.set()
                t.join()
                rates.append(counter[0][0] / counter[0][1])
                if round_ % 2 == 1:
                    alone.append(fio_mbps(d.uri("data"), 8))
            results[label] = (statistics.median(alone), statistics.median(busy),
                             statistics.median(rates))
    finally:
        for x in (d, other):
            if x:
                x.stop()
                x.cleanup()

    print(f"{args.exports} create+delete pairs back to back, one client "
          f"({calls / wall:.0f} calls/s):")
    print(f"{'call':<14} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, v in (("CreateExport", create_ms), ("DeleteExport", delete_ms)):
        print(f"{name:<14} {len(v):>7} {pct(v, .5):>8.2f} {pct(v, .99):>8.2f} {max(v):>8.2f}")
    print(f"CPU per call: daemon {server_us:.0f} us, client {client_us:.0f} us "
          "(each call is made durable: one state-log record and a flush)")
    print(f"\nunrelated export, fio 1 MiB reads qd8, 8 s [medians of {args.rounds} rounds]:")
    print(f"{'churn':<29} {'calls/s':>8} {'alone MB/s':>11} {'during MB/s':>12} "
          f"{'change':>7} {'MB/s lost per call/s':>21}")
    for label, (a, b, r) in results.items():
        print(f"{label:<29} {r:>8.0f} {a:>11.0f} {b:>12.0f} {(b / a - 1) * 100:>+6.1f}% "
              f"{(a - b) / r:>21.2f}")


if __name__ == "__main__":
    main()
