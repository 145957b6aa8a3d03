"""Shared plumbing of the benchmark scripts.

What lives here: making sure DuckDB is importable, building or locating the
`weir` binary, generating the benchmark data deterministically, writing the
benchmark connector, and running a child process while measuring its wall
time and peak resident set size.

What does not: the benchmarks themselves (`run.py`, `big_csv_rss.py`) and
anything that prints tables.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import venv
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DATA_DIR = BENCH_DIR / "data"
WORK_DIR = BENCH_DIR / "work"
RESULTS_DIR = BENCH_DIR / "results"
REQUIREMENTS = BENCH_DIR / "requirements.txt"
VENV_DIR = BENCH_DIR / ".venv"

# Bump when the generator below changes, so stale files are regenerated.
GENERATOR_VERSION = 1

# Environment variable set before re-executing under a freshly prepared
# interpreter, so a broken install cannot loop forever.
_REEXEC_MARKER = "WEIR_BENCH_REEXEC"


# --------------------------------------------------------------------------
# DuckDB
# --------------------------------------------------------------------------


def ensure_duckdb() -> ModuleType:
    """Imports duckdb, installing `requirements.txt` once if it is missing.

    The install goes to the current interpreter with pip; where that is
    refused (an "externally managed" system Python), a virtual environment is
    created in `bench/.venv`. Either way the script is then re-executed so the
    new package is picked up cleanly.
    """
    try:
        import duckdb

        return duckdb
    except ImportError:
        pass
    if os.environ.get(_REEXEC_MARKER):
        sys.exit(
            "duckdb is still not importable after installing it; install it by hand with\n"
            f"  python3 -m pip install -r {REQUIREMENTS.relative_to(REPO_ROOT)}"
        )
    print(f"duckdb is not installed: installing {REQUIREMENTS.relative_to(REPO_ROOT)} ...", flush=True)
    env = {**os.environ, _REEXEC_MARKER: "1"}
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)]
    if subprocess.run(pip).returncode == 0:
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    print(f"pip refused to install into {sys.executable}; using a virtual environment in bench/.venv", flush=True)
    python = VENV_DIR / "bin" / "python"
    if not python.exists():
        venv.create(VENV_DIR, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)]
    if subprocess.run(pip).returncode != 0:
        sys.exit(f"could not install {REQUIREMENTS}; install duckdb by hand and re-run")
    os.execve(str(python), [str(python), *sys.argv], env)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# The weir binary
# --------------------------------------------------------------------------


def build_weir() -> Path:
    """Builds the release `weir` binary with cargo and returns its path."""
    cargo = shutil.which("cargo")
    if cargo is None:
        sys.exit("cargo is not on PATH: install Rust, or pass --weir PATH to use a built binary")
    print("building weir: cargo build --release -p weir-host", flush=True)
    result = subprocess.run([cargo, "build", "--release", "-p", "weir-host"], cwd=REPO_ROOT)
    if result.returncode != 0:
        sys.exit("cargo build failed")
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = REPO_ROOT / target
    binary = target / "release" / "weir"
    if not binary.exists():
        sys.exit(f"cargo build succeeded but {binary} does not exist")
    return binary


def locate_weir(given: str | None) -> Path:
    """The binary passed with `--weir`, or a freshly built one."""
    if given is None:
        return build_weir()
    binary = Path(given).resolve()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        sys.exit(f"--weir {given}: not an executable file")
    return binary


def weir_version(binary: Path) -> str:
    """What `weir version` prints, or `unknown`."""
    try:
        out = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


# --------------------------------------------------------------------------
# Data generation
# --------------------------------------------------------------------------

_FIRST_NAMES = [
    "Ada", "Alan", "Amara", "Ana", "Ben", "Carlos", "Chen", "Chloe", "Daniel", "Elena",
    "Emma", "Fatima", "Felix", "Grace", "Hana", "Hugo", "Ines", "Ivan", "Jack", "Julia",
    "Kenji", "Laila", "Liam", "Lucas", "Maria", "Mateo", "Mia", "Noah", "Olivia", "Omar",
    "Priya", "Rafael", "Sara", "Sofia", "Tom", "Uma", "Victor", "Wei", "Yusuf", "Zoe",
]
_LAST_NAMES = [
    "Adams", "Baker", "Becker", "Chen", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Gupta",
    "Hansen", "Ito", "Jensen", "Kim", "Kowalski", "Lee", "Lopez", "Martin", "Meyer", "Moreau",
    "Muller", "Nakamura", "Nguyen", "Novak", "Okafor", "Patel", "Petrov", "Rossi", "Santos", "Schmidt",
    "Silva", "Smith", "Suzuki", "Tanaka", "Taylor", "Walker", "Wang", "Weber", "Wilson", "Young",
]
_DOMAINS = ["example.com", "example.org", "mail.example.net", "shop.example", "corp.example.co.uk"]
_COUNTRIES = ["US", "US", "US", "GB", "DE", "FR", "NL", "ES", "IT", "CA", "AU", "JP", "BR", "IN", "SE", "PL"]

# The columns of the generated files, in order.
COLUMNS = [
    "id", "customer_id", "email", "first_name", "last_name", "country",
    "amount", "quantity", "status", "created_at", "zip",
]


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _install_macros(con: Any) -> None:
    """A small integer hash: every value is a pure function of (row, column).

    DuckDB's own `random()` depends on thread scheduling and `hash()` on the
    DuckDB version; this does not, so the same command gives byte-identical
    files on every machine.
    """
    con.execute(
        "CREATE OR REPLACE MACRO h0(i, k) AS "
        "(CAST(i AS BIGINT) * 1103515245 + CAST(k AS BIGINT) * 12345 + 1) % 2147483647"
    )
    con.execute("CREATE OR REPLACE MACRO h1(x) AS (xor(x, x >> 13) * 1597334677) % 2147483647")
    con.execute("CREATE OR REPLACE MACRO rnd(i, k) AS h1(h1(h0(i, k)))")


def generator_sql(rows: int, typed: bool) -> str:
    """A query yielding `rows` rows of realistic orders.

    `typed = False` renders the columns as a CSV export would (timestamps as
    ISO 8601 text, amounts with two decimals); `typed = True` keeps native
    types for Parquet (TIMESTAMP, DOUBLE).
    """
    if typed:
        created_at = "TIMESTAMP '2023-01-01 00:00:00' + to_seconds(rnd(i, 8) % 63072000)"
        amount = "(rnd(i, 7) % 1000000) / 100.0"
    else:
        created_at = (
            "strftime(TIMESTAMP '2023-01-01 00:00:00' + to_seconds(rnd(i, 8) % 63072000), "
            "'%Y-%m-%dT%H:%M:%S')"
        )
        amount = "CAST((rnd(i, 7) % 1000000) / 100.0 AS DECIMAL(10, 2))"
    return f"""
WITH base AS (
    SELECT
        range AS i,
        {_sql_list(_FIRST_NAMES)}[1 + rnd(range, 2) % {len(_FIRST_NAMES)}] AS first_name,
        {_sql_list(_LAST_NAMES)}[1 + rnd(range, 3) % {len(_LAST_NAMES)}] AS last_name,
        {_sql_list(_COUNTRIES)}[1 + rnd(range, 5) % {len(_COUNTRIES)}] AS country_code
    FROM range({rows})
)
SELECT
    i + 1 AS id,
    1 + rnd(i, 1) % 250000 AS customer_id,
    first_name || '.' || last_name || CAST(rnd(i, 4) % 1000 AS VARCHAR) || '@'
        || {_sql_list(_DOMAINS)}[1 + rnd(i, 6) % {len(_DOMAINS)}] AS email,
    first_name,
    last_name,
    CASE WHEN rnd(i, 10) % 10 = 0 THEN lower(country_code) ELSE country_code END AS country,
    {amount} AS amount,
    1 + rnd(i, 11) % 10 AS quantity,
    CASE
        WHEN rnd(i, 12) % 100 < 40 THEN 'paid'
        WHEN rnd(i, 12) % 100 < 65 THEN 'shipped'
        WHEN rnd(i, 12) % 100 < 80 THEN 'pending'
        WHEN rnd(i, 12) % 100 < 92 THEN 'cancelled'
        ELSE 'refunded'
    END AS status,
    {created_at} AS created_at,
    lpad(CAST(rnd(i, 9) % 100000 AS VARCHAR), 5, '0') AS zip
FROM base
"""


def size_label(rows: int) -> str:
    """`1000000` → `1m`, `250000` → `250k`."""
    for unit, label in ((1_000_000, "m"), (1_000, "k")):
        if rows >= unit and rows % unit == 0:
            return f"{rows // unit}{label}"
    return str(rows)


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _is_current(path: Path, rows: int) -> bool:
    meta = _meta_path(path)
    if not (path.exists() and meta.exists()):
        return False
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return (
        info.get("rows") == rows
        and info.get("generator") == GENERATOR_VERSION
        and info.get("bytes") == path.stat().st_size
    )


def generate(duckdb: ModuleType, path: Path, rows: int, fmt: str) -> Path:
    """Writes `rows` generated rows to `path` as `csv` or `parquet`.

    Skipped when the file is already there with the same row count and
    generator version (recorded in `<file>.meta.json`).
    """
    if _is_current(path, rows):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"generating {path.relative_to(REPO_ROOT)} ({rows:,} rows) ...", flush=True)
    start = time.perf_counter()
    con = duckdb.connect()
    _install_macros(con)
    partial = path.with_name(path.name + ".partial")
    options = "FORMAT csv, HEADER" if fmt == "csv" else "FORMAT parquet, COMPRESSION snappy"
    query = generator_sql(rows, typed=(fmt == "parquet"))
    con.execute(f"COPY ({query}) TO '{partial}' ({options})")
    con.close()
    partial.replace(path)
    _meta_path(path).write_text(
        json.dumps(
            {"rows": rows, "format": fmt, "generator": GENERATOR_VERSION, "bytes": path.stat().st_size},
            indent=2,
        )
        + "\n"
    )
    print(f"  done in {time.perf_counter() - start:.1f}s, {path.stat().st_size / 1e6:,.1f} MB", flush=True)
    return path


def csv_bytes_per_row(duckdb: ModuleType, sample_rows: int = 100_000) -> float:
    """Average size of one generated CSV row, measured on a sample."""
    sample = DATA_DIR / f"sample_{size_label(sample_rows)}.csv"
    generate(duckdb, sample, sample_rows, "csv")
    return sample.stat().st_size / sample_rows


# --------------------------------------------------------------------------
# The job both engines run
# --------------------------------------------------------------------------

JOB_SQL = """SELECT
    id,
    lower(email) AS email,
    upper(country) AS country,
    CAST(amount AS DOUBLE) * quantity AS total,
    created_at
FROM {source}
WHERE status <> 'cancelled' AND quantity > 1"""

# The scope the Weir connector creates, hence `output/<scope>.csv`.
JOB_SCOPE = "result"
JOB_COLUMNS = ["id", "email", "country", "total", "created_at"]


def write_job_connector(directory: Path) -> Path:
    """Writes the benchmark connector (`connector.toml` + `script.sql`)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "connector.toml").write_text(
        """\
api_name    = "bench_filter_project"
name        = "Benchmark: filter, project, cast"
description = "Generated by bench/harness.py; the same query DuckDB runs."
type        = "spreadsheet"
status      = "operational"

[sql]
file = "script.sql"

[limits]
max_runtime = "2h"
max_rows    = 1_000_000_000
"""
    )
    (directory / "script.sql").write_text(
        f"CREATE VIEW output.{JOB_SCOPE} AS\n{JOB_SQL.format(source='input.data')};\n"
    )
    return directory


def duckdb_job_sql(input_path: Path, output_path: Path) -> str:
    """The DuckDB statement: the same query, reading and writing files."""
    if input_path.suffix == ".parquet":
        source = f"read_parquet('{input_path}')"
    else:
        source = f"read_csv('{input_path}', header = true)"
    return f"COPY ({JOB_SQL.format(source=source)}) TO '{output_path}' (FORMAT csv, HEADER)"


# A child process runs DuckDB, so that both engines are measured the same
# way: process start to exit, with the peak RSS of that process alone.
DUCKDB_CHILD = """
import json, sys, time
import duckdb
sql, threads = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
start = time.perf_counter()
rows = con.execute(sql).fetchone()[0]
print(json.dumps({"rows": rows, "execute_s": time.perf_counter() - start}))
"""


# --------------------------------------------------------------------------
# Measuring a child process
# --------------------------------------------------------------------------


@dataclass
class Measured:
    """One finished child process."""

    wall_s: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str


# Runs argv[2:] as a forked grandchild and writes its peak RSS (kB) to
# argv[1]; used where GNU time is not installed. See `run_measured`.
_RSS_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    kb = usage.ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    f.write(f"Maximum resident set size (kbytes): {kb}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""

GNU_TIME = Path("/usr/bin/time")


@functools.lru_cache(maxsize=1)
def _has_gnu_time() -> bool:
    if not GNU_TIME.exists():
        return False
    probe = subprocess.run(
        [str(GNU_TIME), "-v", "-o", os.devnull, "true"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return probe.returncode == 0


def run_measured(cmd: list[str], log_dir: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> Measured:
    """Runs `cmd`, timing it from spawn to exit and reading its peak RSS.

    The peak RSS is the child's `ru_maxrss` as `wait4(2)` reports it. It
    cannot be taken from a direct child of this script: Linux carries the
    parent's high-water mark over `vfork` + `exec`, so every child would
    seem at least as large as this Python process with DuckDB loaded. The
    command therefore runs under GNU `time -v` ("Maximum resident set
    size"), or, without it, under a tiny Python launcher that forks it from
    a fresh interpreter (which puts a floor of roughly 10 MiB on the value).
    Output goes to files in `log_dir` so a chatty child cannot block on a
    full pipe.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
    rss_path = log_dir / "rusage.txt"
    rss_path.unlink(missing_ok=True)
    if _has_gnu_time():
        wrapped = [str(GNU_TIME), "-v", "-o", str(rss_path), *cmd]
    else:
        wrapped = [sys.executable, "-c", _RSS_LAUNCHER, str(rss_path), *cmd]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        result = subprocess.run(wrapped, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                                env={**os.environ, **env} if env else None)
        wall = time.perf_counter() - start
    return Measured(
        wall_s=wall,
        peak_rss_bytes=_read_max_rss_kb(rss_path) * 1024,
        returncode=result.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def _read_max_rss_kb(path: Path) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.strip().partition(":")
        if name == "Maximum resident set size (kbytes)":
            return int(value.strip())
    return 0


def machine_info() -> dict[str, Any]:
    """What the results were measured on."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _total_memory(),
    }


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None



def alternate(commands: dict[str, list[str]], repeat: int, log_root: Path, fresh: Path | None = None,
              env: dict[str, str] | None = None) -> dict[str, list[float]]:
    """Runs the commands in turn, once to warm up and `repeat` times more;
    the wall times of the timed runs, by name. `fresh` (the first command's
    output) is removed before each of its runs; a failed run ends the script."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    first = next(iter(commands))
    for i in range(repeat + 1):
        for name, cmd in commands.items():
            if fresh is not None and name == first:
                shutil.rmtree(fresh, ignore_errors=True)
            measured = run_measured(cmd, log_root / f"{name}-logs", env=env)
            if measured.returncode != 0:
                sys.exit(f"{name} failed with exit code {measured.returncode}\n{measured.stderr[-4000:]}")
            if i > 0:
                times[name].append(measured.wall_s)
    return times


def report_ratio(name: str, title: str, times: dict[str, list[float]], ours: str, theirs: str,
                 rows: int, target: float, label: str, extra: dict[str, Any]) -> float:
    """Prints the medians of `times` (per engine), their throughput ratio
    (`theirs` median over `ours`) against `target`, and saves the results
    as `name`; returns the ratio."""
    import statistics
    medians = {engine: statistics.median(t) for engine, t in times.items()}
    ratio = medians[theirs] / medians[ours]
    print(title)
    for engine in (ours, theirs):
        print(f"  {engine:7} {medians[engine]:8.2f} s   {rows / medians[engine]:12,.0f} rows/s")
    print(f"  {label} throughput: {ratio:.2f} (target >= {target}) {'PASS' if ratio >= target else 'BELOW TARGET'}")
    path = write_results(name, {**extra, "rows": rows, "machine": machine_info(),
                                "median_s": medians, "runs_s": times, "ratio": ratio, "target": target})
    print(f"results: {path}")
    return ratio


def write_results(name: str, document: dict[str, Any]) -> Path:
    """Saves a results document as `bench/results/<name>-<UTC time>.json`."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
