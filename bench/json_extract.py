#!/usr/bin/env python3
"""JSON extraction side by side: Weir's JSON functions against DuckDB's.

The same file of webhook-like deliveries (JSON Lines with a `body` column
holding each order as JSON text, as a webhook batch is written) is read by
both engines, which pull seven fields out of every body (nested keys, an
array element, an array's length, typed numbers) and write them as CSV.
Both run as child processes, timed from start to exit, alternating, and
the median of the timed runs is compared: Weir's throughput over DuckDB's,
target >= 1.0.

    python3 bench/json_extract.py                      # 1M rows, 5 timed runs
    python3 bench/json_extract.py --rows 200000 --repeat 3 --weir target/release/weir
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import harness

WORK_DIR = harness.WORK_DIR / "json_extract"

# What both engines extract, in the same order and with the same names.
WEIR_SCRIPT = """CREATE VIEW output.orders AS SELECT
    json_get_str(body, 'id') AS order_id,
    json_get_str(body, 'customer', 'email') AS email,
    json_get_str(body, 'customer', 'address', 'city') AS city,
    json_get_int(body, 'lines', 0, 'qty') AS first_qty,
    json_get_float(body, 'total') AS total,
    json_length(body, 'lines') AS line_count,
    json_get_bool(body, 'paid') AS paid
FROM input.data"""

DUCKDB_SQL = """COPY (SELECT
    json_extract_string(body, '$.id') AS order_id,
    json_extract_string(body, '$.customer.email') AS email,
    json_extract_string(body, '$.customer.address.city') AS city,
    CAST(json_extract(body, '$.lines[0].qty') AS BIGINT) AS first_qty,
    CAST(json_extract(body, '$.total') AS DOUBLE) AS total,
    json_array_length(body, '$.lines') AS line_count,
    CAST(json_extract(body, '$.paid') AS BOOLEAN) AS paid
FROM read_json('{input}', format = 'newline_delimited', columns = {{
    'received_at': 'VARCHAR', 'webhook_id': 'VARCHAR', 'content_type': 'VARCHAR',
    'querystring': 'VARCHAR', 'body': 'VARCHAR'}})) TO '{output}' (HEADER, DELIMITER ',')"""

DUCKDB_CHILD = """
import json, sys, time
import duckdb
sql, threads = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
start = time.perf_counter()
con.execute(sql)
print(json.dumps({"execute_s": time.perf_counter() - start}))
"""


def generate(path: Path, rows: int) -> Path:
    """Writes `rows` deliveries deterministically (once per row count)."""
    if path.exists() and path.with_suffix(".rows").exists() and path.with_suffix(".rows").read_text() == str(rows):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    cities = ["Oslo", "Lisbon", "Austin", "Kyoto", "Nairobi", "Lima"]
    with path.open("w") as f:
        for i in range(rows):
            lines = [{"sku": f"SKU-{(i + j) % 97:03d}", "qty": 1 + (i + j) % 5, "price": 2.5 + j} for j in range(1 + i % 3)]
            body = {
                "id": f"ord_{i}",
                "created_at": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
                "customer": {
                    "email": f"customer{i % 50000}@example.com",
                    "name": f"Customer {i % 50000}",
                    "address": {"city": cities[i % len(cities)], "zip": f"{i % 100000:05d}"},
                },
                "lines": lines,
                "total": round(sum(line["qty"] * line["price"] for line in lines), 2),
                "paid": i % 4 != 0,
            }
            delivery = {
                "received_at": "2026-11-30T12:00:00Z",
                "webhook_id": f"msg_{i}",
                "content_type": "application/json",
                "querystring": "",
                "body": json.dumps(body, separators=(",", ":")),
            }
            f.write(json.dumps(delivery, separators=(",", ":")))
            f.write("\n")
    path.with_suffix(".rows").write_text(str(rows))
    return path


def job_dir(directory: Path) -> Path:
    """The Weir connector of the job."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "connector.toml").write_text(
        'api_name = "json_bench"\ntype = "webhook"\n[sql]\nfile = "script.sql"\n[limits]\nmax_runtime = "30m"\nmax_memory = "4GiB"\n'
    )
    (directory / "script.sql").write_text(WEIR_SCRIPT)
    return directory


def first_lines(path: Path, n: int) -> list[str]:
    with path.open() as f:
        return [next(f, "").rstrip("\n") for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each engine (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weir", help="a built weir binary (default: build one in release)")
    args = parser.parse_args(argv)
    harness.ensure_duckdb()
    weir = harness.locate_weir(args.weir)
    data = generate(harness.DATA_DIR / f"webhooks-{args.rows}.jsonl", args.rows)
    job = job_dir(WORK_DIR / "job")
    weir_out, duck_out = WORK_DIR / "weir", WORK_DIR / "duckdb.csv"
    weir_cmd = [str(weir), "run", str(job), "--input", str(data), "--out", str(weir_out),
                "--threads", str(args.threads), "--json"]
    duck_cmd = [sys.executable, "-c", DUCKDB_CHILD, DUCKDB_SQL.format(input=data, output=duck_out), str(args.threads)]
    times = harness.alternate({"weir": weir_cmd, "duckdb": duck_cmd}, args.repeat, WORK_DIR, weir_out)
    # The same rows come out of both: as many, and the first ones' text
    # fields and integers alike (numbers are written each engine's way).
    weir_csv = weir_out / "output" / "orders.csv"
    ours, theirs = first_lines(weir_csv, 4), first_lines(duck_out, 4)
    pick = lambda lines: [line.split(",")[:4] + line.split(",")[5:6] for line in lines]  # noqa: E731
    if pick(ours) != pick(theirs):
        sys.exit(f"the engines disagree:\nweir:   {ours}\nduckdb: {theirs}")
    counts = [sum(1 for _ in path.open()) for path in (weir_csv, duck_out)]
    if counts[0] != counts[1]:
        sys.exit(f"the engines wrote {counts[0]} and {counts[1]} lines")
    harness.report_ratio(
        "json", f"JSON extraction, {args.rows} rows, {args.threads} thread(s), median of {args.repeat} runs",
        times, "weir", "duckdb", args.rows, 1.0, "Weir/DuckDB",
        {"threads": args.threads, "repeat": args.repeat, "weir_version": harness.weir_version(weir)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
