#!/usr/bin/env python3
"""What a Wasm transform step costs, in one run:

1. overhead: the same CSV job (`SELECT *` of a generated CSV into one
   scope) with and without an identity transform plugin, `weir run`
   alternating, median wall time; the ratio is
   `rows/s with the plugin / rows/s without` (target >= 0.8). Batches are
   DataFusion's 8192 rows, about 1 MiB of Arrow each for this file;
2. cancel latency of a run stuck in an infinite-loop plugin: `weir serve`
   on loopback, the plugin published with `POST /plugins`, N runs each
   canceled while the guest spins, from `POST /executions/{id}/cancel` to
   `canceled` stored in the state database (target p99 <= 50 ms);
3. instantiate + init cost per step: `weir plugin check --json` on a small
   file, N times (the compiled component comes from the on-disk cache after
   the first), median of instantiation and of `init`.

    python3 bench/plugin.py [--weir PATH] [--rows 1000000] [--repeat 5] [--cancels 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import api as apibench
import harness

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "plugins"
WASM_DIR = PLUGINS / "target" / "wasm32-wasip2" / "release"


def build_plugins() -> None:
    print("building plugins (cargo build --release --target wasm32-wasip2) ...", flush=True)
    subprocess.run(
        ["cargo", "build", "--release", "--target", "wasm32-wasip2", "--manifest-path", str(PLUGINS / "Cargo.toml")],
        check=True,
    )


def wasm(name: str) -> Path:
    return WASM_DIR / f"{name.replace('-', '_')}.wasm"


def write_connector(directory: Path, with_plugin: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    toml = """\
api_name = "bench_plugin"
type     = "spreadsheet"
status   = "operational"

[sql]
text = "CREATE VIEW output.result AS SELECT * FROM input.data"

[limits]
max_runtime = "2h"
max_rows    = 1_000_000_000
"""
    if with_plugin:
        toml += '\n[[transforms]]\nscope = "result"\nplugin = "identity@0.1.0"\n'
        (directory / "plugins").mkdir(exist_ok=True)
        shutil.copy(wasm("identity"), directory / "plugins" / "identity-0.1.0.wasm")
    (directory / "connector.toml").write_text(toml)
    return directory


def run_job(weir: Path, connector: Path, data: Path, out: Path, logs: Path) -> float:
    m = harness.run_measured([str(weir), "run", str(connector), "--input", str(data), "--out", str(out), "--json"], logs)
    if m.returncode != 0:
        raise SystemExit(f"weir run failed ({m.returncode}):\n{m.stderr[-2000:]}")
    doc = json.loads(m.stdout)
    if doc["status"] != "success":
        raise SystemExit(f"weir run ended {doc['status']}: {doc.get('error')}")
    return m.wall_s


def overhead(weir: Path, rows: int, repeat: int, work: Path) -> dict:
    duckdb = harness.ensure_duckdb()
    data = harness.generate(duckdb, harness.DATA_DIR / f"orders_{harness.size_label(rows)}.csv", rows, "csv")
    plain = write_connector(work / "plain", with_plugin=False)
    plugged = write_connector(work / "identity", with_plugin=True)
    times: dict[str, list[float]] = {"plain": [], "identity": []}
    for name, c in (("plain", plain), ("identity", plugged)):  # warm-up
        run_job(weir, c, data, work / f"out-{name}", work / "logs")
    for i in range(repeat):
        order = [("plain", plain), ("identity", plugged)]
        if i % 2:
            order.reverse()
        for name, c in order:
            times[name].append(run_job(weir, c, data, work / f"out-{name}", work / "logs"))
    plain_s, plugged_s = statistics.median(times["plain"]), statistics.median(times["identity"])
    ratio = plain_s / plugged_s
    print(f"overhead: {rows} rows, without plugin {plain_s:.2f} s ({rows / plain_s:,.0f} rows/s), "
          f"with identity plugin {plugged_s:.2f} s ({rows / plugged_s:,.0f} rows/s), ratio {ratio:.2f} "
          f"({'PASS' if ratio >= 0.8 else 'MISS'} >= 0.8)")
    return {"rows": rows, "input_bytes": data.stat().st_size, "runs_s": times, "plain_median_s": plain_s,
            "identity_median_s": plugged_s, "ratio": ratio}


def cancel_latency(weir: Path, n: int) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="weir-plugin-bench-"))
    proc, port = apibench.start_server(weir, data_dir)
    db = data_dir / "state.db"
    try:
        api = apibench.Api(port)
        status, body = api.call("POST", "/plugins?name=hostile&version=0.1.0", wasm("hostile").read_bytes(),
                                "application/wasm")
        assert status == 201, body
        doc = {"api_name": "looping", "type": "spreadsheet",
               "sql": {"text": "CREATE VIEW output.people AS SELECT * FROM input.data"},
               "transforms": [{"scope": "people", "plugin": "hostile@0.1.0", "config": {"mode": "loop"}}],
               "limits": {"max_concurrency": 100, "max_runtime": "1h"}}
        status, body = api.json("POST", "/connectors", doc)
        assert status == 201, body
        # Publishing dry-runs the script, which would loop: make it live directly.
        con = sqlite3.connect(db)
        con.execute("UPDATE connectors SET live_version = 1 WHERE api_name = 'looping'")
        con.commit()
        status, body = api.json("PATCH", "/connectors/looping", {"status": "operational"})
        assert status == 200, body
        out = []
        for _ in range(n):
            _, d = api.call("POST", "/connectors/looping/runs?filename=x.csv", b"a\n1\n", "text/csv")
            ex = d["id"]
            apibench.wait_in_stage(api, ex, 2)
            time.sleep(0.05)  # inside the guest's loop
            out.append(apibench.timed_cancel(api, con, ex))
        con.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)
    result = {"n": len(out), "p50_ms": statistics.median(out), "p99_ms": apibench.percentile(out, 99), "max_ms": max(out)}
    print(f"cancel in a looping plugin: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
          f"max {result['max_ms']:.1f} ms (n = {n}; {'PASS' if result['p99_ms'] <= 50 else 'MISS'} p99 <= 50 ms)")
    return result


def instantiate_cost(weir: Path, n: int, work: Path) -> dict:
    sample = work / "sample.csv"
    sample.write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(100)))
    env = dict(os.environ, XDG_CACHE_HOME=str(work / "cache"))
    runs = []
    for _ in range(n + 1):
        p = subprocess.run([str(weir), "plugin", "check", str(wasm("identity")), "--input", str(sample), "--json"],
                           capture_output=True, text=True, env=env, check=True)
        runs.append(json.loads(p.stdout))
    warm = runs[1:]  # the first compiles and fills the cache
    result = {
        "n": n,
        "first_compile_ms": runs[0]["compile_ms"],
        "cached_compile_ms": statistics.median(r["compile_ms"] for r in warm),
        "instantiate_ms": statistics.median(r["instantiate_ms"] for r in warm),
        "init_ms": statistics.median(r["init_ms"] for r in warm),
    }
    print(f"per step: instantiate {result['instantiate_ms']:.2f} ms + init {result['init_ms']:.2f} ms (medians of {n}); "
          f"compile {result['first_compile_ms']:.0f} ms first, {result['cached_compile_ms']:.1f} ms from the disk cache")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weir", help="path of the weir binary (default: build it)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cancels", type=int, default=50)
    parser.add_argument("--skip-build", action="store_true", help="use the plugins already in plugins/target")
    args = parser.parse_args()
    if not args.skip_build:
        build_plugins()
    weir = harness.locate_weir(args.weir)
    work = Path(tempfile.mkdtemp(prefix="weir-plugin-work-"))
    try:
        results = {
            "overhead": overhead(weir, args.rows, args.repeat, work),
            "cancel": cancel_latency(weir, args.cancels),
            "instantiate": instantiate_cost(weir, 20, work),
            "machine": harness.machine_info(),
        }
        print("results:", harness.write_results("plugin", results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
