#!/usr/bin/env python3
"""Several `weir serve` processes on one data directory, in one run:

1. cancel latency across processes: `POST /executions/{id}/cancel` sent to
   process B for a run that process A executes, to `canceled` stored in the
   state database (target p99 <= 100 ms). The run is in its SQL stage.
2. no-op runs per second: N triggers of a one-row connector spread over 1
   and then 3 processes (2 workers each), from the first trigger to the
   last end.

    python3 bench/processes.py [--weir PATH] [--cancels 50] [--runs 120]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import harness
from api import Api, percentile, setup, start_server, timed_cancel, wait_status


def claimer(api: Api, ex: str) -> str:
    _, doc = api.call("GET", f"/executions/{ex}/logs?limit=500")
    for line in doc["data"]:
        if line["message"].startswith("claimed by worker "):
            return line["message"].removeprefix("claimed by worker ")
    raise SystemExit(f"{ex} was not claimed")


def cancel_across(weir: Path, n: int) -> list[float]:
    data_dir = Path(tempfile.mkdtemp(prefix="weir-processes-bench-"))
    procs = []
    try:
        # B first, kept busy by a run of its own, so that A claims the rest.
        b_proc, b_port = start_server(weir, data_dir, WEIR_WORKER_ID="b", WEIR_WORKERS="1")
        procs.append(b_proc)
        b = Api(b_port)
        setup(b, data_dir / "state.db")
        _, held = b.call("POST", "/connectors/slow/runs?filename=x.csv", b"a\n1\n", "text/csv")
        wait_status(b, held["id"], {"running"})
        a_proc, a_port = start_server(weir, data_dir, WEIR_WORKER_ID="a", WEIR_WORKERS="2")
        procs.append(a_proc)
        a = Api(a_port)
        con = sqlite3.connect(data_dir / "state.db")
        out = []
        for _ in range(n):
            _, doc = a.call("POST", "/connectors/slow/runs?filename=x.csv", b"a\n1\n", "text/csv")
            ex = doc["id"]
            wait_status(a, ex, {"running"})
            assert claimer(a, ex) == "a"
            time.sleep(0.05)
            out.append(timed_cancel(b, con, ex))
        con.close()
        return out
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


def noop_rate(weir: Path, processes: int, runs: int) -> float:
    data_dir = Path(tempfile.mkdtemp(prefix="weir-processes-bench-"))
    procs = []
    try:
        apis = []
        for i in range(processes):
            proc, port = start_server(weir, data_dir, WEIR_WORKER_ID=f"p{i}")
            procs.append(proc)
            apis.append(Api(port))
            if i == 0:
                setup(apis[0], data_dir / "state.db")
        started = time.perf_counter()
        ids = []
        for i in range(runs):
            _, doc = apis[i % processes].call("POST", "/connectors/small/runs?filename=t.csv",
                                              b"email,city\na@example.com,X\n", "text/csv")
            ids.append(doc["id"])
        for ex in ids:
            d = wait_status(apis[0], ex, {"success", "partial_success", "failed", "canceled"})
            assert d["status"] == "success", d
        return runs / (time.perf_counter() - started)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weir", help="path of the weir binary (default: build it)")
    parser.add_argument("--cancels", type=int, default=50)
    parser.add_argument("--runs", type=int, default=120)
    args = parser.parse_args()
    weir = harness.locate_weir(args.weir)
    lat = cancel_across(weir, args.cancels)
    results = {"cancel_across": {"n": len(lat), "p50_ms": statistics.median(lat),
                                 "p99_ms": percentile(lat, 99), "max_ms": max(lat)}}
    print(f"cancel across processes: p50 {statistics.median(lat):.1f} ms, p99 {percentile(lat, 99):.1f} ms "
          f"(n = {len(lat)})")
    for n in (1, 3):
        rate = noop_rate(weir, n, args.runs)
        results[f"noop_runs_per_s_{n}"] = rate
        print(f"no-op runs with {n} process(es): {rate:.1f}/s ({args.runs} runs)")
    results["machine"] = harness.machine_info()
    print("results:", harness.write_results("processes", results))


if __name__ == "__main__":
    main()
