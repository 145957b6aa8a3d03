#!/usr/bin/env python3
"""Load throughput into the embedded record store, side by side with
SQLite's own ceiling on the same machine, in one run.

Weir: `weir run` of a connector with one load step (match on a unique
`email`) over N generated rows — first into an empty store (all creates),
then the same N rows with changed values (all updates). The time is the
whole run: CSV intake, SQL, variables, matching and commits.

Ceiling: Python's sqlite3 with the same table, indexes and settings (WAL,
synchronous=NORMAL): `INSERT INTO t SELECT … FROM src.t` for creates and
`UPDATE t SET … FROM src.t WHERE t.email = src.email` for updates, rows
already in a second SQLite database, so nothing but SQLite's own write path
is measured.

    python3 bench/load.py [--rows 1000000] [--repeat 3] [--weir PATH]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import time
import uuid
from pathlib import Path

import harness

CONNECTOR = """api_name = "bench_load"
type = "spreadsheet"
status = "operational"
[sql]
file = "script.sql"
[limits]
max_runtime = "2h"
max_rows = 1_000_000_000
[[variables]]
name = "email"
scope = "people"
column = "email"
type = "email"
required = true
[[variables]]
name = "name"
scope = "people"
column = "name"
type = "string"
[[variables]]
name = "city"
scope = "people"
column = "city"
type = "string"
[[variables]]
name = "score"
scope = "people"
column = "score"
type = "number"
[[loads]]
order = 1
scope = "people"
object = "contact"
  [[loads.match]]
  field = "email"
  variable = "email"
  no_match = "create_new"
  single_match = "update_current"
  multiple_match = "do_not_upload"
  [[loads.fields]]
  field = "email"
  variables = ["email"]
  [[loads.fields]]
  field = "name"
  variables = ["name"]
  [[loads.fields]]
  field = "city"
  variables = ["city"]
  [[loads.fields]]
  field = "score"
  variables = ["score"]
"""

OBJECTS = """[[objects]]
name = "contact"
  [[objects.fields]]
  name = "email"
  type = "email"
  unique = true
  [[objects.fields]]
  name = "city"
  type = "text"
  [[objects.fields]]
  name = "score"
  type = "number"
"""

SCRIPT = "CREATE VIEW output.people AS SELECT email, name, city, score FROM input.data;\n"


def generate(duckdb, path: Path, rows: int, version: int) -> Path:
    """People with unique e-mails; `version` changes every city and score."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(
        f"""COPY (
            SELECT 'user' || i || '@example.com' AS email,
                   'Name ' || i AS name,
                   'City ' || ((i * 7 + {version}) % 1000) AS city,
                   ((i * 13 + {version} * 17) % 10000) / 100.0 AS score
            FROM range({rows}) t(i)
        ) TO '{path}' (FORMAT csv, HEADER)"""
    )
    con.close()
    return path


def write_connector(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "connector.toml").write_text(CONNECTOR)
    (directory / "objects.toml").write_text(OBJECTS)
    (directory / "script.sql").write_text(SCRIPT)
    return directory


SCHEMA = """CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, name TEXT, email TEXT, city TEXT, score REAL);
CREATE UNIQUE INDEX t_email ON t (email);"""


def sqlite_ceiling(csv_v1: Path, csv_v2: Path, work: Path) -> tuple[float, float]:
    """Seconds for INSERT…SELECT of all rows and for UPDATE…FROM of all rows."""
    work.mkdir(parents=True, exist_ok=True)
    src1, src2, dst = work / "src1.db", work / "src2.db", work / "dst.db"
    for p in (src1, src2, dst, work / "dst.db-wal", work / "dst.db-shm"):
        p.unlink(missing_ok=True)
    for src, csv_path in ((src1, csv_v1), (src2, csv_v2)):
        con = sqlite3.connect(src)
        con.executescript(SCHEMA)
        with csv_path.open() as f:
            next(f)
            rows = ((str(uuid.uuid4()), n, e, c, float(s)) for e, n, c, s in (line.rstrip("\n").split(",") for line in f))
            con.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows)
        con.commit()
        con.close()
    con = sqlite3.connect(dst, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.executescript(SCHEMA)
    con.execute(f"ATTACH '{src1}' AS s1")
    con.execute(f"ATTACH '{src2}' AS s2")
    start = time.perf_counter()
    con.execute("BEGIN")
    con.execute("INSERT INTO t SELECT * FROM s1.t")
    con.execute("COMMIT")
    creates = time.perf_counter() - start
    start = time.perf_counter()
    con.execute("BEGIN")
    con.execute("UPDATE t SET name = s.name, city = s.city, score = s.score FROM s2.t AS s WHERE t.email = s.email")
    con.execute("COMMIT")
    updates = time.perf_counter() - start
    con.close()
    return creates, updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--weir", help="use this weir binary instead of building one with cargo")
    args = parser.parse_args()
    duckdb = harness.ensure_duckdb()
    weir = harness.locate_weir(args.weir)
    label = harness.size_label(args.rows)
    v1 = generate(duckdb, harness.DATA_DIR / f"people_{label}_v1.csv", args.rows, 1)
    v2 = generate(duckdb, harness.DATA_DIR / f"people_{label}_v2.csv", args.rows, 2)
    job = write_connector(harness.WORK_DIR / "load-job")
    results: dict[str, list[float]] = {"weir_create": [], "weir_update": [], "sqlite_create": [], "sqlite_update": []}
    for i in range(args.repeat):
        out = harness.WORK_DIR / "load-out"
        shutil.rmtree(out, ignore_errors=True)
        db = out / "records.db"
        for phase, csv_path in (("create", v1), ("update", v2)):
            cmd = [str(weir), "run", str(job), "--input", str(csv_path), "--out", str(out), "--db", str(db), "--json", "--threads", "1"]
            m = harness.run_measured(cmd, harness.WORK_DIR / f"load-logs-{phase}")
            if m.returncode != 0:
                raise SystemExit(f"weir failed ({phase}):\n{m.stdout[-2000:]}\n{m.stderr[-2000:]}")
            results[f"weir_{phase}"].append(m.wall_s)
            print(f"  run {i + 1}/{args.repeat} weir {phase:6} {m.wall_s:7.3f}s  {m.peak_rss_bytes / 2**20:6.1f} MiB", flush=True)
        c, u = sqlite_ceiling(v1, v2, harness.WORK_DIR / "load-sqlite")
        results["sqlite_create"].append(c)
        results["sqlite_update"].append(u)
        print(f"  run {i + 1}/{args.repeat} sqlite create {c:7.3f}s  update {u:7.3f}s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nLoad into the embedded store, {args.rows:,} rows, median of {args.repeat}")
    print(f"{'phase':8} {'weir s':>8} {'weir rows/s':>12} {'sqlite s':>9} {'ceiling rows/s':>15} {'ratio':>6} {'target':>7}")
    for phase, target in (("create", 0.5), ("update", 0.35)):
        w, s = med[f"weir_{phase}"], med[f"sqlite_{phase}"]
        ratio = s / w
        verdict = "PASS" if ratio >= target else "MISS"
        print(f"{phase:8} {w:8.3f} {args.rows / w:12,.0f} {s:9.3f} {args.rows / s:15,.0f} {ratio:6.2f} {'≥ ' + str(target):>7} {verdict}")
    path = harness.write_results("load", {"rows": args.rows, "runs": results, "medians": med})
    print(f"results: {path.relative_to(harness.REPO_ROOT)}")


if __name__ == "__main__":
    main()
