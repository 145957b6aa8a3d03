#!/usr/bin/env python3
"""Peak memory of Weir on a CSV far larger than the memory it may use.

Generates a CSV of about `--gb` GiB (2 by default) into `bench/data/`, runs
the benchmark's filter/project script over it with `weir run --dry-run`, and
prints the peak resident set size of the process and whether it stayed under
`--limit-mib` (1 GiB by default): reading is streaming and the output scope
is a view, so memory must not grow with the file. Exits 1 when it did not.

    python3 bench/big_csv_rss.py
    python3 bench/big_csv_rss.py --gb 4 --weir target/release/weir
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time

import harness
from harness import DATA_DIR, WORK_DIR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.0, help="size of the generated CSV in GiB (default 2)")
    parser.add_argument("--limit-mib", type=int, default=1024, help="peak RSS that must not be reached (default 1024)")
    parser.add_argument("--threads", type=int, help="weir --threads (default: weir's own default)")
    parser.add_argument("--weir", help="use this weir binary instead of building one with cargo")
    parser.add_argument("--keep-output", action="store_true", help="keep the output CSV in bench/work/")
    args = parser.parse_args(argv)
    if args.gb <= 0 or args.limit_mib <= 0 or (args.threads is not None and args.threads < 1):
        parser.error("--gb, --limit-mib and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    duckdb = harness.ensure_duckdb()
    weir = harness.locate_weir(args.weir)

    rows = math.ceil(args.gb * 2**30 / harness.csv_bytes_per_row(duckdb))
    label = f"{args.gb:g}gb".replace(".", "_")
    csv = harness.generate(duckdb, DATA_DIR / f"orders_{label}.csv", rows, "csv")
    job = harness.write_job_connector(WORK_DIR / "job")
    out = WORK_DIR / f"big-csv-{label}"
    shutil.rmtree(out, ignore_errors=True)

    cmd = [str(weir), "run", str(job), "--input", str(csv), "--dry-run", "--out", str(out), "--json"]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    print(f"running: {' '.join(cmd)}", flush=True)
    measured = harness.run_measured(cmd, WORK_DIR / f"big-csv-{label}-logs")
    if measured.returncode != 0:
        print(measured.stderr[-4000:], file=sys.stderr)
        print(f"weir failed with exit code {measured.returncode}", file=sys.stderr)
        return 1
    try:
        status = json.loads(measured.stdout).get("status")
    except ValueError:
        status = None

    peak_mib = measured.peak_rss_bytes / 2**20
    under = 0 < peak_mib < args.limit_mib
    size = csv.stat().st_size
    lines = [
        ("input", f"{csv.name}, {size / 2**30:.2f} GiB, {rows:,} rows"),
        ("status", str(status)),
        ("elapsed (wall clock)", f"{measured.wall_s:.1f} s ({size / 1e6 / measured.wall_s:,.1f} MB/s)"),
        ("Maximum resident set size", f"{peak_mib:,.1f} MiB"),
        (f"under {args.limit_mib} MiB", "PASS" if under else "MISS"),
    ]
    print()
    for name, value in lines:
        print(f"{name + ':':<30}{value}")
    path = harness.write_results(
        "big-csv-rss",
        {
            "benchmark": "peak RSS of weir run on a large CSV",
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": harness.machine_info(),
            "versions": {"weir": harness.weir_version(weir)},
            "input": {"file": csv.name, "bytes": size, "rows": rows},
            "threads": args.threads,
            "status": status,
            "wall_s": measured.wall_s,
            "peak_rss_bytes": measured.peak_rss_bytes,
            "limit_bytes": args.limit_mib * 2**20,
            "passed": under,
        },
    )
    print(f"results: {path.relative_to(harness.REPO_ROOT)}")
    if not args.keep_output:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if under and status in ("success", "partial_success") else 1


if __name__ == "__main__":
    sys.exit(main())
