#!/usr/bin/env python3
"""Weir and DuckDB side by side: intake + SQL + CSV output.

Both engines run the same filter/project/cast query over the same generated
CSV and Parquet files, one thread each (or each count of `--threads`),
each writing its result as CSV.
Prints wall time, throughput, peak RSS and the Weir/DuckDB throughput ratio
against the targets, checks that both produced the same rows, and saves
everything to `bench/results/run-<time>.json`.

    python3 bench/run.py                      # 1M and 10M rows, 5 repetitions
    python3 bench/run.py --quick              # 1M rows, 3 repetitions
    python3 bench/run.py --weir target/release/weir --rows 2000000
    python3 bench/run.py --threads 1,2 --formats csv --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import harness
from harness import DATA_DIR, WORK_DIR, Measured

ENGINES = ("weir", "duckdb")
FORMATS = ("csv", "parquet")

# Throughput of Weir divided by that of DuckDB must reach these.
TARGETS = {"csv": 1.3, "parquet": 1.2}

# Relative tolerance when comparing floating-point sums of both outputs
# (the engines may add in different orders).
SUM_TOLERANCE = 1e-9


@dataclass
class Case:
    """One input file: a size and a format."""

    rows: int
    fmt: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.fmt}-{harness.size_label(self.rows)}"

    @property
    def input_bytes(self) -> int:
        return self.path.stat().st_size


@dataclass
class EngineResult:
    """All timed runs of one engine on one case."""

    wall_s: list[float] = field(default_factory=list)
    peak_rss_bytes: list[int] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def peak_rss_mib(self) -> float:
        return max(self.peak_rss_bytes) / 2**20


@dataclass
class CaseResult:
    """Both engines on one case, and whether their outputs agree."""

    case: Case
    engines: dict[str, EngineResult]
    correctness: list[str]

    def rows_per_s(self, engine: str) -> float:
        return self.case.rows / self.engines[engine].median_s

    def mb_per_s(self, engine: str) -> float:
        return self.case.input_bytes / 1e6 / self.engines[engine].median_s

    @property
    def ratio(self) -> float:
        return self.rows_per_s("weir") / self.rows_per_s("duckdb")

    @property
    def target(self) -> float:
        return TARGETS[self.case.fmt]

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case.name,
            "format": self.case.fmt,
            "rows": self.case.rows,
            "input_file": self.case.path.name,
            "input_bytes": self.case.input_bytes,
            "engines": {
                name: {
                    "wall_s": r.wall_s,
                    "median_s": r.median_s,
                    "rows_per_s": self.rows_per_s(name),
                    "mb_per_s": self.mb_per_s(name),
                    "peak_rss_bytes": max(r.peak_rss_bytes),
                }
                for name, r in self.engines.items()
            },
            "ratio_weir_over_duckdb": self.ratio,
            "target": self.target,
            "passed": self.passed,
            "correctness_problems": self.correctness,
        }


class Runner:
    """Runs one engine once on one case and returns the measurement."""

    def __init__(self, weir: Path, job_dir: Path, threads: int) -> None:
        self.weir = weir
        self.job_dir = job_dir
        self.threads = threads

    def output_path(self, engine: str, case: Case) -> Path:
        if engine == "weir":
            return WORK_DIR / case.name / "weir" / "output" / f"{harness.JOB_SCOPE}.csv"
        return WORK_DIR / case.name / "duckdb" / "output.csv"

    def run(self, engine: str, case: Case) -> Measured:
        out_dir = WORK_DIR / case.name / engine
        shutil.rmtree(out_dir, ignore_errors=True)
        # Weir creates its --out directory; DuckDB needs the folder of its file.
        (out_dir.parent if engine == "weir" else out_dir).mkdir(parents=True, exist_ok=True)
        logs = WORK_DIR / case.name / f"{engine}-logs"
        if engine == "weir":
            cmd = [
                str(self.weir), "run", str(self.job_dir),
                "--input", str(case.path),
                "--dry-run",
                "--out", str(out_dir),
                "--threads", str(self.threads),
                "--json",
            ]
        else:
            sql = harness.duckdb_job_sql(case.path, self.output_path("duckdb", case))
            cmd = [sys.executable, "-c", harness.DUCKDB_CHILD, sql, str(self.threads)]
        measured = run_checked(cmd, logs, f"{engine} on {case.name}")
        if engine == "weir":
            check_weir_document(measured.stdout, case)
        return measured


def run_checked(cmd: list[str], logs: Path, what: str) -> Measured:
    """Runs `cmd` measured; exits with its stderr when it fails."""
    measured = harness.run_measured(cmd, logs)
    if measured.returncode != 0:
        sys.exit(
            f"{what} failed with exit code {measured.returncode}\n"
            f"command: {' '.join(cmd)}\n{measured.stderr[-4000:]}"
        )
    return measured


def check_weir_document(stdout: str, case: Case) -> None:
    """The execution document must say the run succeeded."""
    try:
        document = json.loads(stdout)
    except ValueError:
        sys.exit(f"weir on {case.name}: --json did not print a JSON document:\n{stdout[:2000]}")
    status = document.get("status")
    if status not in ("success", "partial_success"):
        sys.exit(f"weir on {case.name}: status {status!r}, error {document.get('error')!r}")


def output_summary(duckdb: ModuleType, path: Path) -> dict[str, Any]:
    """Header, row count and order-independent checksums of an output CSV."""
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split(",")
    con = duckdb.connect()
    row = con.execute(
        f"""
        SELECT
            count(*),
            sum(CAST(id AS BIGINT)),
            sum(CAST(total AS DOUBLE)),
            bit_xor(hash(email, country)),
            sum(CAST(epoch(try_cast(created_at AS TIMESTAMP)) AS BIGINT)),
            count(try_cast(created_at AS TIMESTAMP))
        FROM read_csv('{path}', header = true, all_varchar = true)
        """
    ).fetchone()
    con.close()
    keys = ("rows", "id_sum", "total_sum", "text_hash", "created_at_sum", "created_at_parsed")
    return {"header": header, **dict(zip(keys, row))}


def compare_outputs(duckdb: ModuleType, weir_csv: Path, duckdb_csv: Path) -> list[str]:
    """Differences between the two outputs; empty when they agree."""
    if not weir_csv.exists():
        return [f"weir wrote no {weir_csv.name}"]
    weir, duck = output_summary(duckdb, weir_csv), output_summary(duckdb, duckdb_csv)
    if weir["header"] != duck["header"]:
        return [f"headers differ: weir {weir['header']} vs duckdb {duck['header']}"]
    problems = []
    for key in ("rows", "id_sum", "text_hash", "created_at_parsed", "created_at_sum"):
        if weir[key] != duck[key]:
            problems.append(f"{key} differs: weir {weir[key]} vs duckdb {duck[key]}")
    if not math.isclose(weir["total_sum"] or 0.0, duck["total_sum"] or 0.0, rel_tol=SUM_TOLERANCE):
        problems.append(f"total_sum differs: weir {weir['total_sum']} vs duckdb {duck['total_sum']}")
    return problems


def measure_case(duckdb: ModuleType, runner: Runner, case: Case, repeat: int) -> CaseResult:
    """A warm-up run of each engine (whose outputs are compared), then
    `repeat` timed runs, alternating which engine goes first."""
    print(f"\n{case.name}: {case.path.name}, {case.input_bytes / 1e6:,.1f} MB", flush=True)
    for engine in ENGINES:
        runner.run(engine, case)
    problems = compare_outputs(duckdb, runner.output_path("weir", case), runner.output_path("duckdb", case))
    print("  outputs agree" if not problems else "  OUTPUTS DIFFER: " + "; ".join(problems), flush=True)
    results = {engine: EngineResult() for engine in ENGINES}
    for i in range(repeat):
        order = ENGINES if i % 2 == 0 else tuple(reversed(ENGINES))
        for engine in order:
            m = runner.run(engine, case)
            results[engine].wall_s.append(m.wall_s)
            results[engine].peak_rss_bytes.append(m.peak_rss_bytes)
            print(f"  run {i + 1}/{repeat} {engine:<6} {m.wall_s:7.3f}s  {m.peak_rss_bytes / 2**20:7.1f} MiB", flush=True)
    return CaseResult(case, results, problems)


def measure_startup(runner: Runner) -> dict[str, dict[str, float] | None]:
    """Cost of starting each engine's process doing nothing, for the notes
    (None for an engine whose no-op command failed)."""
    logs = WORK_DIR / "startup"
    commands = {
        "weir": [str(runner.weir), "version"],
        "duckdb": [sys.executable, "-c", "import duckdb; duckdb.connect().execute('SELECT 1')"],
    }
    startup: dict[str, dict[str, float] | None] = {}
    for engine, cmd in commands.items():
        runs = [harness.run_measured(cmd, logs / engine) for _ in range(3)]
        if any(m.returncode != 0 for m in runs):
            startup[engine] = None
            continue
        startup[engine] = {
            "wall_s": statistics.median(m.wall_s for m in runs),
            "peak_rss_bytes": max(m.peak_rss_bytes for m in runs),
        }
    return startup


def print_table(results: list[CaseResult], startup: dict[str, dict[str, float] | None], threads: int) -> None:
    header = (
        f"{'input':<12} {'MB':>8} {'weir s':>8} {'duckdb s':>8} {'weir rows/s':>12} {'duckdb rows/s':>13} "
        f"{'weir MB/s':>9} {'duckdb MB/s':>11} {'weir RSS':>9} {'duckdb RSS':>10} {'ratio':>6} {'target':>7}  result"
    )
    print(f"\nWeir vs DuckDB, {threads} thread(s) each, median wall time of the timed runs (process start to exit)")
    print(header)
    print("-" * len(header))
    for r in results:
        w, d = r.engines["weir"], r.engines["duckdb"]
        verdict = "PASS" if r.passed else "MISS"
        if r.correctness:
            verdict += " (outputs differ)"
        print(
            f"{r.case.name:<12} {r.case.input_bytes / 1e6:>8,.1f} {w.median_s:>8.3f} {d.median_s:>8.3f} "
            f"{r.rows_per_s('weir'):>12,.0f} {r.rows_per_s('duckdb'):>13,.0f} "
            f"{r.mb_per_s('weir'):>9,.1f} {r.mb_per_s('duckdb'):>11,.1f} "
            f"{w.peak_rss_mib:>5,.0f} MiB {d.peak_rss_mib:>6,.0f} MiB "
            f"{r.ratio:>6.2f} {'≥ ' + format(r.target, '.1f'):>7}  {verdict}"
        )
    print("\nratio = weir rows/s ÷ duckdb rows/s. RSS = peak resident set size of the process.")
    notes = []
    for engine, label in (("weir", "weir version"), ("duckdb", "python + import duckdb")):
        cost = startup.get(engine)
        if cost is not None:
            notes.append(f"{label} {cost['wall_s'] * 1000:.0f} ms / {cost['peak_rss_bytes'] / 2**20:.0f} MiB")
    if notes:
        print(f"Process start alone: {', '.join(notes)} (included in the times above).")


def parse_rows(text: str) -> list[int]:
    try:
        rows = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated row counts: {e}") from e
    if not rows or any(n <= 0 for n in rows):
        raise argparse.ArgumentTypeError("row counts must be positive")
    return rows


def parse_threads(text: str) -> list[int]:
    try:
        threads = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated thread counts: {e}") from e
    if not threads or any(n < 1 for n in threads):
        raise argparse.ArgumentTypeError("thread counts must be at least 1")
    return threads


def print_speedups(by_threads: dict[int, list[CaseResult]]) -> None:
    """Each engine's speed-up from the fewest threads measured to each
    other count, input by input."""
    counts = sorted(by_threads)
    if len(counts) < 2:
        return
    base = counts[0]
    print(f"\nSpeed-up over {base} thread(s) (median wall time at {base} ÷ median at n)")
    print(f"{'input':<12} {'threads':>7} {'weir':>6} {'duckdb':>7}  weir's at least duckdb's")
    for i, first in enumerate(by_threads[base]):
        for n in counts[1:]:
            other = by_threads[n][i]
            weir = first.engines["weir"].median_s / other.engines["weir"].median_s
            duck = first.engines["duckdb"].median_s / other.engines["duckdb"].median_s
            print(f"{first.case.name:<12} {n:>7} {weir:>6.2f} {duck:>7.2f}  {'yes' if weir >= duck else 'no'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=parse_rows, help="comma-separated input sizes (default 1000000,10000000)")
    parser.add_argument("--repeat", type=int, help="timed runs per engine and input (default 5, --quick 3)")
    parser.add_argument("--quick", action="store_true", help="1M rows only, 3 repetitions")
    parser.add_argument("--formats", default="csv,parquet", help="comma-separated: csv, parquet (default both)")
    parser.add_argument("--threads", type=parse_threads, default=[1],
                        help="comma-separated thread counts, each engine run with each (default 1; e.g. 1,2)")
    parser.add_argument("--weir", help="use this weir binary instead of building one with cargo")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = [1_000_000] if args.quick else [1_000_000, 10_000_000]
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = set(args.formats) - set(FORMATS)
    if unknown or not args.formats:
        parser.error(f"--formats: choose from {', '.join(FORMATS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    duckdb = harness.ensure_duckdb()
    weir = harness.locate_weir(args.weir)
    cases = [
        Case(rows, fmt, harness.generate(duckdb, DATA_DIR / f"orders_{harness.size_label(rows)}.{fmt}", rows, fmt))
        for rows in args.rows
        for fmt in args.formats
    ]
    job = harness.write_job_connector(WORK_DIR / "job")
    startup = measure_startup(Runner(weir, job, 1))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    by_threads: dict[int, list[CaseResult]] = {}
    for threads in args.threads:
        print(f"\n== {threads} thread(s) each ==", flush=True)
        runner = Runner(weir, job, threads)
        by_threads[threads] = [measure_case(duckdb, runner, case, args.repeat) for case in cases]
    for threads, results in by_threads.items():
        print_table(results, startup, threads)
    print_speedups(by_threads)
    results = [r for rs in by_threads.values() for r in rs]
    path = harness.write_results(
        "run",
        {
            "benchmark": "intake+sql (filter/project/cast to CSV)",
            "started_at": started,
            "machine": harness.machine_info(),
            "versions": {"weir": harness.weir_version(weir), "duckdb": duckdb.__version__},
            "settings": {"rows": args.rows, "formats": args.formats, "repeat": args.repeat, "threads": args.threads},
            "sql": harness.JOB_SQL,
            "startup": startup,
            "targets": TARGETS,
            "cases": [dict(r.to_json(), threads=threads) for threads, rs in by_threads.items() for r in rs],
        },
    )
    print(f"results: {path.relative_to(harness.REPO_ROOT)}")
    failed = any(r.correctness for r in results)
    missed = any(not r.passed for r in results)
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
