#!/usr/bin/env python3
"""What worker processes cost: `weir serve` with `WEIR_ISOLATION=process`
(every run in a worker process of its own, the default) against
`WEIR_ISOLATION=none` (runs inside the server), in one run, alternating:

1. no-op run latency: a one-row file to a connector with a one-line script
   and no loads, from `POST /connectors/{c}/runs` to a terminal status,
   one run at a time (median and p99 over `--runs`);
2. small-file throughput: `--burst` such runs posted from 4 client threads
   at once, until the last has ended (runs completed/s, 2 workers);
3. cancel latency in the SQL stage, `POST …/cancel` to `canceled` stored
   (p50/p99 over `--cancels`).

Each mode runs `--rounds` times on a fresh data directory, the modes
alternating; the medians of the rounds are compared as
process ÷ none. Target (issue): cancel p99 ≤ 100 ms with workers.

    python3 bench/isolation.py [--weir PATH] [--rounds 3] [--runs 40] [--burst 200]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import api
import harness

SMALL = b"email,city\na@example.com,X\n"
TERMINAL = {"success", "partial_success", "failed", "canceled"}


def noop_latency(client: api.Api, runs: int) -> list[float]:
    """Milliseconds from trigger to end of `runs` runs, one at a time."""
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        status, doc = client.call("POST", "/connectors/small/runs?filename=t.csv", SMALL, "text/csv")
        assert status == 202, doc
        end = api.wait_status(client, doc["id"], TERMINAL)
        assert end["status"] == "success", end
        out.append((time.perf_counter() - t) * 1000)
    return out


def burst(port: int, db: Path, n: int, threads: int = 4) -> float:
    """Runs completed per second: `n` small runs posted from `threads`
    clients, timed until the last one has ended."""
    ids: list[str] = []
    lock = threading.Lock()
    per_thread = n // threads

    def post() -> None:
        client = api.Api(port)
        for _ in range(per_thread):
            status, doc = client.call("POST", "/connectors/small/runs?filename=t.csv", SMALL, "text/csv")
            assert status == 202, doc
            with lock:
                ids.append(doc["id"])

    t = time.perf_counter()
    workers = [threading.Thread(target=post) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    con = sqlite3.connect(db)
    marks = ",".join("?" * len(ids))
    while con.execute(f"SELECT count(*) FROM executions WHERE id IN ({marks}) AND status IN "
                      "('queued','running','canceling')", ids).fetchone()[0]:
        time.sleep(0.005)
    elapsed = time.perf_counter() - t
    failed = con.execute(f"SELECT count(*) FROM executions WHERE id IN ({marks}) AND status <> 'success'",
                         ids).fetchone()[0]
    con.close()
    assert failed == 0, f"{failed} of the burst's runs did not succeed"
    return len(ids) / elapsed


def one_round(weir: Path, mode: str, args: argparse.Namespace) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix=f"weir-isolation-{mode}-"))
    proc, port = api.start_server(weir, data_dir, WEIR_ISOLATION=mode)
    db = data_dir / "state.db"
    try:
        client = api.Api(port)
        api.setup(client, db)
        noop_latency(client, 3)  # warm-up: plugin cache, page cache
        lat = noop_latency(client, args.runs)
        rate = burst(port, db, args.burst)
        api.drain_queue(client, db)
        cancels = api.cancel_latency(client, db, "sql", args.cancels, b"", b"")
        return {"noop_p50_ms": statistics.median(lat), "noop_p99_ms": api.percentile(lat, 99),
                "runs_per_s": rate, "cancel_p50_ms": statistics.median(cancels),
                "cancel_p99_ms": api.percentile(cancels, 99)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weir", help="path of the weir binary (default: build it)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--cancels", type=int, default=30)
    args = parser.parse_args()
    weir = harness.locate_weir(args.weir)
    rounds: dict[str, list[dict]] = {"process": [], "none": []}
    for i in range(args.rounds):
        for mode in (("process", "none") if i % 2 == 0 else ("none", "process")):
            r = one_round(weir, mode, args)
            rounds[mode].append(r)
            print(f"round {i + 1} {mode:>7}: no-op run p50 {r['noop_p50_ms']:.1f} ms, p99 {r['noop_p99_ms']:.1f} ms; "
                  f"{r['runs_per_s']:.1f} runs/s; cancel p50 {r['cancel_p50_ms']:.1f} ms, "
                  f"p99 {r['cancel_p99_ms']:.1f} ms", flush=True)
    medians = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in rounds.items()}
    p, n = medians["process"], medians["none"]
    ratios = {"noop_p50": p["noop_p50_ms"] / n["noop_p50_ms"], "runs_per_s": p["runs_per_s"] / n["runs_per_s"]}
    print(f"no-op run p50: {p['noop_p50_ms']:.1f} ms with workers, {n['noop_p50_ms']:.1f} ms without "
          f"(x{ratios['noop_p50']:.2f})")
    print(f"small-file runs: {p['runs_per_s']:.1f}/s with workers, {n['runs_per_s']:.1f}/s without "
          f"(x{ratios['runs_per_s']:.2f})")
    verdict = "PASS" if p["cancel_p99_ms"] <= 100 else "MISS"
    print(f"cancel p99 with workers: {p['cancel_p99_ms']:.1f} ms (target <= 100 ms: {verdict})")
    results = {"rounds": rounds, "medians": medians, "ratios": ratios, "args": vars(args),
               "machine": harness.machine_info()}
    print("results:", harness.write_results("isolation", results))


if __name__ == "__main__":
    main()
