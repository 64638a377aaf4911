#!/usr/bin/python3
"""Control-plane benchmark: create and remove memory exports through the gRPC
API (one client) and report per-call latency, while fio reads an unrelated
export; the same fio job alone is the baseline. Rounds alternate
"fio alone" and "fio + API churn"; medians are reported.

Usage: tests/bench/control.py [BUILD_DIR] [--exports 1000] [--rounds 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("build", nargs="?", default=os.path.join(HERE, "..", "..", "build"))
    p.add_argument("--exports", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    os.environ["NBDMGRD"] = os.path.join(args.build, "daemon", "nbdmgrd")
    import nbdmgr_fixture
    nbdmgr_fixture.NBDMGRD = os.environ["NBDMGRD"]
    d = Daemon(["name=data,backend=memory,size=1GiB"], extra=["--log-level", "warn"])
    d.start()
    try:
        subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri={d.uri('data')}",
                        "--rw=write", "--bs=1M", "--size=1G"], capture_output=True)
        _, pb, call = raw_api(d.control)
        create_ms, delete_ms, alone, busy, spin = [], [], [], [], []

        def churn(stop):
            i = 0
            while not stop.is_set() or i < args.exports:
                name = f"bench{i % args.exports}"
                t0 = time.perf_counter()
                call("CreateExport", pb.CreateExportRequest(
                    export_id=name, export=pb.Export(memory=pb.MemoryBackend(size_bytes=1 << 20))),
                    pb.Export)
                t1 = time.perf_counter()
                call("DeleteExport", pb.DeleteExportRequest(name=f"exports/{name}"),
                     pb.DeleteExportResponse)
                t2 = time.perf_counter()
                create_ms.append((t1 - t0) * 1e3)
                delete_ms.append((t2 - t1) * 1e3)
                i += 1
                if i >= args.exports and stop.is_set():
                    break

        def spinner(stop):
            # Control condition: a client process burning the same CPU
            # without calling the daemon.
            x = 0
            while not stop.is_set():
                x += 1

        for _ in range(args.rounds):
            alone.append(fio_mbps(d.uri("data"), 8))
            for target, out in ((churn, busy), (spinner, spin)):
                stop = threading.Event()
                t = threading.Thread(target=target, args=(stop,))
                t.start()
                out.append(fio_mbps(d.uri("data"), 8))
                stop.set()
                t.join()
    finally:
        d.stop()
        d.cleanup()

    def pct(v, q):
        v = sorted(v)
        return v[min(len(v) - 1, int(q * len(v)))]
    print(f"{'call':<14} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, v in (("CreateExport", create_ms), ("DeleteExport", delete_ms)):
        print(f"{name:<14} {len(v):>7} {pct(v, .5):>8.2f} {pct(v, .99):>8.2f} {max(v):>8.2f}")
    a, b, c = statistics.median(alone), statistics.median(busy), statistics.median(spin)
    print(f"\nunrelated export, fio 1 MiB reads qd8 [medians of {args.rounds} rounds]:")
    print(f"  alone                          {a:8.0f} MB/s")
    print(f"  during API churn (this client) {b:8.0f} MB/s ({(b / a - 1) * 100:+.1f}%)")
    print(f"  beside a CPU-bound Python loop {c:8.0f} MB/s ({(c / a - 1) * 100:+.1f}%)"
          "  <- control: the client's own CPU, no API calls")
    print("(each call persists the export set: temp file, fsync, rename, fsync dir)")


if __name__ == "__main__":
    main()
