#!/usr/bin/env python3
"""Several `weir serve` processes on one data directory, in one run:

1. cancel latency across processes: `POST /executions/{id}/cancel` sent to
   process B for a run that process A executes, to `canceled` stored in the
   state database (target p99 <= 100 ms). The run is in its SQL stage.
2. no-op runs per second: N triggers of a one-row connector spread over 1
   and then 3 processes (2 workers each), from the first trigger to the
   last end.

    python3 bench/processes.py [--weir PATH] [--cancels 50] [--runs 120] [--processes 1,2,3]
                               [--backends embedded,postgres]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import harness
from api import Api, StateDb, percentile, setup, start_server, timed_cancel, wait_status
from backends import Backend


def claimer(api: Api, ex: str) -> str:
    _, doc = api.call("GET", f"/executions/{ex}/logs?limit=500")
    for line in doc["data"]:
        if line["message"].startswith("claimed by worker "):
            return line["message"].removeprefix("claimed by worker ")
    raise SystemExit(f"{ex} was not claimed")


def cancel_across(weir: Path, backend: Backend, n: int) -> list[float]:
    data_dir = Path(tempfile.mkdtemp(prefix="weir-processes-bench-"))
    env, db = backend.fresh(data_dir)
    procs = []
    try:
        # B first, kept busy by a run of its own, so that A claims the rest.
        b_proc, b_port = start_server(weir, data_dir, WEIR_WORKER_ID="b", WEIR_WORKERS="1", **env)
        procs.append(b_proc)
        b = Api(b_port)
        setup(b, db)
        _, held = b.call("POST", "/connectors/slow/runs?filename=x.csv", b"a\n1\n", "text/csv")
        wait_status(b, held["id"], {"running"})
        a_proc, a_port = start_server(weir, data_dir, WEIR_WORKER_ID="a", WEIR_WORKERS="2", **env)
        procs.append(a_proc)
        a = Api(a_port)
        con = StateDb(db)
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


def noop_rate(weir: Path, backend: Backend, processes: int, runs: int) -> float:
    data_dir = Path(tempfile.mkdtemp(prefix="weir-processes-bench-"))
    env, db = backend.fresh(data_dir)
    procs = []
    try:
        apis = []
        for i in range(processes):
            proc, port = start_server(weir, data_dir, WEIR_WORKER_ID=f"p{i}", **env)
            procs.append(proc)
            apis.append(Api(port))
            if i == 0:
                setup(apis[0], db)
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
    parser.add_argument("--processes", default="1,3", help="the numbers of processes no-op runs are spread over")
    parser.add_argument("--backends", default="embedded",
                        help="embedded, postgres (state in PostgreSQL, files in an S3 bucket), or embedded,postgres")
    args = parser.parse_args()
    weir = harness.locate_weir(args.weir)
    results: dict = {}
    for name in args.backends.split(","):
        backend = Backend(name)
        try:
            lat = cancel_across(weir, backend, args.cancels)
            res = {"cancel_across": {"n": len(lat), "p50_ms": statistics.median(lat),
                                     "p99_ms": percentile(lat, 99), "max_ms": max(lat)}}
            print(f"[{name}] cancel across processes: p50 {statistics.median(lat):.1f} ms, "
                  f"p99 {percentile(lat, 99):.1f} ms (n = {len(lat)})")
            for n in (int(p) for p in args.processes.split(",")):
                rate = noop_rate(weir, backend, n, args.runs)
                res[f"noop_runs_per_s_{n}"] = rate
                print(f"[{name}] no-op runs with {n} process(es): {rate:.1f}/s ({args.runs} runs)")
            results[name] = res
        finally:
            backend.stop()
    results["machine"] = harness.machine_info()
    print("results:", harness.write_results("processes", results))


if __name__ == "__main__":
    main()
