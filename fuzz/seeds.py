#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/.

Seeds are small valid inputs of every kind a target reads, so the fuzzer
starts from the formats' structure instead of from nothing: delimited text
in several encodings, JSON and JSON lines, a workbook, a ZIP of files, the
example connectors' connector.toml, and dev packages zipped from the
examples.

    python3 fuzz/seeds.py
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
sys.path.insert(0, str(ROOT / "bench"))
from api import workbook  # noqa: E402  (an XLSX writer with no dependency)

# The intake target's first byte picks the file name (fuzz_targets/intake.rs).
NAMES = ["input.csv", "input.tsv", "input.txt", "input.json", "input.jsonl", "input.xlsx", "input.zip",
         "input.parquet", "input"]


def pick(name: str) -> bytes:
    return bytes([NAMES.index(name)])


def zipped(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def parquet() -> bytes | None:
    """A small Parquet file, when DuckDB is at hand (bench/requirements.txt)."""
    try:
        import duckdb
    except ImportError:
        return None
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.parquet"
        duckdb.sql(f"COPY (SELECT range AS id, 'n' || range AS name, range * 1.5 AS x FROM range(5)) TO '{path}'")
        return path.read_bytes()


def intake() -> dict[str, bytes]:
    csv = b"id,email,amount,created_at,active\n1,ada@example.com,12.50,2024-01-02T03:04:05Z,true\n2,,7,2024-02-03,false\n"
    seeds = {
        "csv": pick("input.csv") + csv,
        "csv-semicolon-quoted": pick("input.txt") + b'name;note\n"Smith; J";"said ""hi"""\nLi;\n',
        "tsv": pick("input.tsv") + b"a\tb\n1\t2\n3\t\n",
        "latin1": pick("input.csv") + "nom,ville\nJos\u00e9,S\u00e3o Paulo\n".encode("latin-1"),
        "utf16": pick("input.csv") + "a,b\n\u00e9,2\n".encode("utf-16"),
        "bom": pick("input.csv") + b"\xef\xbb\xbfa,b\n1,2\n",
        "json-array": pick("input.json") + b'[{"a": 1, "b": {"c": [1, 2]}}, {"a": null, "d": "x"}]',
        "jsonl": pick("input.jsonl") + b'{"a": 1}\n{"a": "two", "b": true}\n',
        "xlsx": pick("input.xlsx") + workbook(3),
        "zip": pick("input.zip") + zipped({"orders.csv": csv, "people.jsonl": b'{"a": 1}\n'}),
        "sniffed": pick("input") + csv,
    }
    if (data := parquet()) is not None:
        seeds["parquet"] = pick("input.parquet") + data
    return seeds


def xlsx() -> dict[str, bytes]:
    seeds = {"three-rows": workbook(3), "empty": workbook(0)}
    for path in sorted((ROOT / "tests" / "fixtures").rglob("*.xlsx")):
        if path.stat().st_size < 64 * 1024:
            seeds[path.stem] = path.read_bytes()
    # The hostile corpus's small workbook: cells at both corners of the grid.
    seeds["dense"] = (ROOT / "tests" / "hostile" / "dense.xlsx").read_bytes()
    return seeds


def sql_check() -> dict[str, bytes]:
    """Scripts of every statement kind a connector may hold, planned against
    the target's sample (`id, name, amount` in `input.data`)."""
    scripts = {
        "view": "CREATE VIEW output.o AS SELECT id, upper(name) AS name FROM input.data WHERE amount > 1",
        "table-insert": "CREATE TABLE t AS SELECT id FROM input.data;\nINSERT INTO t SELECT id + 1 FROM input.data;\n"
                        "CREATE VIEW output.o AS SELECT * FROM t",
        "join-window": "CREATE VIEW output.o AS SELECT a.id, row_number() OVER (PARTITION BY a.name ORDER BY b.amount) "
                       "AS n FROM input.data a JOIN input.data b ON a.id = b.id",
        "cte-union": "CREATE VIEW output.o AS WITH x AS (SELECT id FROM input.data) SELECT id FROM x UNION ALL "
                     "SELECT 1",
        "group-case": "CREATE VIEW output.o AS SELECT name, CASE WHEN count(*) > 1 THEN 'many' ELSE 'one' END AS k, "
                      "sum(amount) FROM input.data GROUP BY name HAVING sum(amount) IS NOT NULL",
        "meta": "CREATE VIEW output.o AS SELECT * FROM input.data CROSS JOIN meta.execution",
        "refused": "CREATE VIEW output.\"../x\" AS SELECT 1 AS x",
    }
    seeds = {name: text.encode() for name, text in scripts.items()}
    for path in sorted((ROOT / "examples").glob("*/*.sql")):
        seeds[f"example-{path.parent.name}"] = path.read_bytes()
    return seeds


def connector_toml() -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted((ROOT / "examples").glob("*/connector.toml"))}


def package_zip() -> dict[str, bytes]:
    out = {}
    for example in sorted((ROOT / "examples").iterdir()):
        if not (example / "connector.toml").exists():
            continue
        files = {str(p.relative_to(example)): p.read_bytes() for p in sorted(example.rglob("*"))
                 if p.is_file() and p.stat().st_size < 64 * 1024 and "plugins" not in p.parts}
        out[example.name] = zipped(files)
    out["traversal"] = zipped({"connector.toml": b"api_name = 'x'\n", "../escape.txt": b"x"})
    return out


def main() -> None:
    targets = (("intake", intake()), ("xlsx", xlsx()), ("sql_check", sql_check()),
               ("connector_toml", connector_toml()), ("package_zip", package_zip()))
    for target, seeds in targets:
        directory = FUZZ / "corpus" / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (directory / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(seeds)} seeds in {directory.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
