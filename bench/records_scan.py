#!/usr/bin/env python3
"""`records.<object>` in connector SQL over a large object: what a script's
`WHERE` saves when the store applies it.

One object of N records (2M by default) in a local record store, read by
`weir run` with `[limits] max_memory = "64MiB"`:

- `pushed`: `WHERE email = '…'`, a condition the store applies;
- `range`: `WHERE score < 1000`, also applied by the store;
- `kept`: `WHERE lower(email) = '…'`, which the store cannot apply, so it
  hands every record over and DataFusion filters;
- `none`: a script that reads no records (what a run costs by itself).

For each: the median wall time, the peak RSS and the records the store
handed over (from the run's log line `records.contact: N records read from
the store`).

    python3 bench/records_scan.py [--weir PATH] [--records 2000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import uuid
from pathlib import Path

import harness

QUERIES = {
    "pushed": "SELECT email, note FROM records.contact WHERE email = 'u1234567@example.com'",
    "range": "SELECT email, score FROM records.contact WHERE score < 1000",
    "kept": "SELECT email, note FROM records.contact WHERE lower(email) = 'u1234567@example.com'",
    "none": "SELECT a FROM input.data",
}

OBJECTS = """[[objects]]
name = "contact"
[[objects.fields]]
name = "email"
type = "email"
[[objects.fields]]
name = "note"
type = "text"
[[objects.fields]]
name = "score"
type = "number"
"""

READ = re.compile(r"records\.contact: (\d+) records? read from the store")


def package(directory: Path, records: int) -> None:
    """A connector directory with the object's snapshot in `records/`."""
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "data").mkdir(parents=True)
    (directory / "records").mkdir()
    (directory / "connector.toml").write_text(
        'api_name = "scan"\ntype = "spreadsheet"\n[sql]\nfile = "script.sql"\n'
        '[limits]\nmax_memory = "64MiB"\n'
    )
    (directory / "objects.toml").write_text(OBJECTS)
    (directory / "data" / "probe.csv").write_text("a\n1\n")
    with (directory / "records" / "contact.jsonl").open("w") as f:
        for i in range(records):
            f.write(json.dumps({
                "id": str(uuid.UUID(int=i + 1, version=4)),
                "email": f"u{i}@example.com",
                "note": f"a note long enough to weigh something, {i}",
                "score": i,
            }))
            f.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weir", help="the weir binary (default: build the release binary)")
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    weir = harness.locate_weir(args.weir)
    work = harness.WORK_DIR / "records_scan"
    connector = work / "connector"
    db = work / "records.db"
    package(connector, args.records)
    db.unlink(missing_ok=True)

    # The first run imports the snapshot into the store.
    (connector / "script.sql").write_text(f"CREATE VIEW output.found AS {QUERIES['none']}")
    imported = harness.run_measured(
        [str(weir), "run", str(connector), "--db", str(db), "--out", str(work / "out")], work / "import-logs")
    if imported.returncode != 0:
        raise SystemExit(f"the import failed:\n{imported.stderr[-4000:]}")
    print(f"{args.records:,} records imported in {imported.wall_s:.1f} s")

    results = {}
    print(f"{'query':8} {'median s':>9} {'peak RSS MiB':>13} {'records read':>13} {'rows out':>9}")
    for name, query in QUERIES.items():
        (connector / "script.sql").write_text(f"CREATE VIEW output.found AS {query}")
        walls, peaks, read, rows = [], [], 0, 0
        for _ in range(args.repeat):
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            m = harness.run_measured(
                [str(weir), "run", str(connector), "--db", str(db), "--out", str(out)], work / f"{name}-logs")
            if m.returncode != 0:
                raise SystemExit(f"{name} failed:\n{m.stderr[-4000:]}")
            walls.append(m.wall_s)
            peaks.append(m.peak_rss_bytes)
            found = READ.search(m.stderr)
            read = int(found.group(1)) if found else 0
            rows = len((out / "output" / "found.csv").read_text().splitlines()) - 1
        results[name] = {"query": query, "runs_s": walls, "median_s": statistics.median(walls),
                         "peak_rss_bytes": max(peaks), "records_read": read, "rows_out": rows}
        print(f"{name:8} {statistics.median(walls):9.2f} {max(peaks) / 2**20:13.0f} {read:13,} {rows:9,}")
    path = harness.write_results("records_scan", {"records": args.records, "machine": harness.machine_info(),
                                                  "import_s": imported.wall_s, "queries": results})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
