#!/usr/bin/env python3
"""Load throughput into the record store on PostgreSQL, side by side with
PostgreSQL's own ceiling for the same rows on the same server, in one run.

Weir: `weir serve --database postgres://…` (one process, one SQL thread per
run), a connector with one load step matching on a unique `email` (the same
job as `load.py`), N generated rows uploaded and run — first into an empty
object (all creates), then the same N rows with changed values (all
updates). The time is the run's own, from its start to its end as its
document says (CSV intake, SQL, variables, matching and commits; not the
upload).

Ceiling, in another database of the same server: `COPY … FROM STDIN` of the
same CSV into a table with the same columns and unique index for creates,
and `INSERT … SELECT … ON CONFLICT (email) DO UPDATE` from a staging table
already holding the changed rows for updates.

    python3 bench/load_postgres.py [--rows 1000000] [--repeat 3] [--weir PATH]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import harness
import pg_source
from api import Api, start_server, wait_status
from load import generate

OBJECT = {"name": "contact", "fields": [
    {"name": "email", "type": "email", "unique": True},
    {"name": "city", "type": "text"},
    {"name": "score", "type": "number"}]}

VARIABLES = [{"name": n, "scope": "people", "column": n, "type": t, **({"required": True} if n == "email" else {})}
             for n, t in (("email", "email"), ("name", "string"), ("city", "string"), ("score", "number"))]

LOADS = [{"order": 1, "scope": "people", "object": "contact",
          "match": [{"field": "email", "variable": "email", "no_match": "create_new",
                     "single_match": "update_current", "multiple_match": "do_not_upload"}],
          "fields": [{"field": f, "variables": [f]} for f in ("email", "name", "city", "score")]}]

CEILING = """CREATE TABLE contact (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text, email text,
                                   city text, score double precision);
CREATE UNIQUE INDEX contact_email_key ON contact (email);
CREATE UNLOGGED TABLE stage (email text, name text, city text, score double precision);"""


def setup(api: Api) -> None:
    status, body = api.json("POST", "/objects", OBJECT)
    assert status == 201, body
    _, f = api.call("POST", "/files?filename=s.csv", b"email,name,city,score\na@example.com,A,X,1.5\n", "text/csv")
    doc = {"api_name": "bench_load", "type": "spreadsheet", "sample_file_id": f["id"],
           "sql": {"text": "CREATE VIEW output.people AS SELECT email, name, city, score FROM input.data"},
           "variables": VARIABLES, "loads": LOADS,
           "limits": {"max_runtime": "1h"}}
    status, body = api.json("POST", "/connectors", doc)
    assert status == 201, body
    status, body = api.json("POST", "/connectors/bench_load/sql/publish", {})
    assert status == 200, body
    status, body = api.json("PATCH", "/connectors/bench_load", {"status": "operational"})
    assert status == 200, body


def seconds_of(doc: dict) -> float:
    start = datetime.fromisoformat(doc["started_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(doc["ended_at"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def weir_run(api: Api, csv_path: Path, expect: str) -> float:
    status, body = api.call("POST", "/connectors/bench_load/runs?filename=people.csv", csv_path.read_bytes(),
                            "text/csv")
    assert status == 202, body
    doc = wait_status(api, body["id"], {"success", "partial_success", "failed", "canceled"}, timeout=7200)
    steps = doc["step_progress"][4]["steps"][0]
    assert doc["status"] == "success" and steps[expect] > 0, doc
    return seconds_of(doc)


def copy_csv(cur, sql: str, path: Path) -> None:
    with cur.copy(sql) as copy, path.open("rb") as f:
        while block := f.read(1 << 20):
            copy.write(block)


def ceiling(url: str, v1: Path, v2: Path) -> tuple[float, float]:
    """Seconds for COPY of all rows and for the upsert of all rows."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS contact, stage")
        con.execute(CEILING)
        with con.cursor() as cur:
            copy_csv(cur, "COPY stage (email, name, city, score) FROM STDIN (FORMAT csv, HEADER)", v2)
        con.execute("ANALYZE stage")
        start = time.perf_counter()
        with con.transaction(), con.cursor() as cur:
            copy_csv(cur, "COPY contact (email, name, city, score) FROM STDIN (FORMAT csv, HEADER)", v1)
        creates = time.perf_counter() - start
        start = time.perf_counter()
        con.execute("""INSERT INTO contact (email, name, city, score) SELECT email, name, city, score FROM stage
                       ON CONFLICT (email) DO UPDATE SET name = excluded.name, city = excluded.city,
                       score = excluded.score""")
        updates = time.perf_counter() - start
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
    cluster = pg_source.Cluster(Path(tempfile.mkdtemp(prefix="weir-bench-pg-")))
    results: dict[str, list[float]] = {"weir_create": [], "weir_update": [], "pg_create": [], "pg_update": []}
    try:
        ceiling_url = cluster.database("ceiling")
        for i in range(args.repeat):
            data = harness.WORK_DIR / "load-pg-server"
            shutil.rmtree(data, ignore_errors=True)
            url = cluster.database(f"weir_{i}")
            proc, port = start_server(weir, data, WEIR_DATABASE=url)
            try:
                api = Api(port)
                setup(api)
                for phase, csv_path, expect in (("create", v1, "created"), ("update", v2, "updated")):
                    s = weir_run(api, csv_path, expect)
                    results[f"weir_{phase}"].append(s)
                    print(f"  run {i + 1}/{args.repeat} weir {phase:6} {s:7.3f}s", flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            c, u = ceiling(ceiling_url, v1, v2)
            results["pg_create"].append(c)
            results["pg_update"].append(u)
            print(f"  run {i + 1}/{args.repeat} postgres create {c:7.3f}s  update {u:7.3f}s", flush=True)
    finally:
        cluster.stop()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nLoad into PostgreSQL, {args.rows:,} rows, median of {args.repeat}")
    print(f"{'phase':8} {'weir s':>8} {'weir rows/s':>12} {'pg s':>9} {'ceiling rows/s':>15} {'ratio':>6} {'target':>7}")
    for phase, target in (("create", 0.5), ("update", 0.3)):
        w, p = med[f"weir_{phase}"], med[f"pg_{phase}"]
        ratio = p / w
        verdict = "PASS" if ratio >= target else "MISS"
        print(f"{phase:8} {w:8.3f} {args.rows / w:12,.0f} {p:9.3f} {args.rows / p:15,.0f} {ratio:6.2f} {'≥ ' + str(target):>7} {verdict}")
    path = harness.write_results("load_postgres", {"rows": args.rows, "runs": results, "medians": med})
    print(f"results: {path.relative_to(harness.REPO_ROOT)}")


if __name__ == "__main__":
    main()
