#!/usr/bin/env python3
"""The web console's cost, in one run on loopback:

1. server time of the runs list with 10,000 executions in the workspace
   (p50/p99 over N requests on one keep-alive connection, the time from
   sending the request to reading the whole page): the first page, a status
   filter, a search by execution id and by idempotency key, and the
   fragment the page refreshes itself with;
2. page weight: the HTML of every page plus the stylesheet and script it
   loads, uncompressed.

Targets (issue): runs list p99 <= 50 ms; every page <= 150 KB.

The workspace gets a few real runs, then its state database is filled to
10,000 executions with copies of them (new ids spread over 30 days, mixed
statuses and triggers), as a workspace that has run for a month would be.

    python3 bench/console.py [--weir PATH] [--executions 10000] [--requests 500]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import shutil
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import harness
from api import KEY, Api, percentile, setup, start_server, wait_status

PAGES = [
    "/sign-in",
    "/runs",
    "/runs/{run}",
    "/connectors",
    "/connectors/loader",
    "/connectors/loader/sql",
    "/connectors/loader/versions?a=1&b=2",
    "/records",
    "/records/contact",
    "/admin/keys",
    "/admin/plugins",
]


def uuid7(ms: int) -> str:
    """A UUIDv7 string for the time `ms` (what the server makes ids of)."""
    rand = random.getrandbits(74)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def fill(db: Path, total: int) -> tuple[str, str]:
    """Copies the workspace's executions until it has `total`; an id and an
    idempotency key to search for."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM executions")]
    have = len(rows)
    now = int(time.time() * 1000)
    month = 30 * 24 * 3600 * 1000
    statuses = ["success"] * 6 + ["partial_success"] * 2 + ["failed", "canceled"]
    triggers = ["file_upload", "file_upload", "webhook", "schedule"]
    wanted_id = wanted_key = ""
    batch = []
    for i in range(total - have):
        row = dict(rows[i % have])
        ms = now - random.randrange(month)
        row["id"] = uuid7(ms)
        row["status"] = statuses[i % len(statuses)]
        row["trigger_type"] = triggers[i % len(triggers)]
        row["owner"] = None
        row["lease_until"] = None
        doc = json.loads(row["document"])
        doc.update(id=row["id"], status=row["status"], trigger_type=row["trigger_type"])
        doc["links"] = {k: v.replace(rows[i % have]["id"], row["id"]) for k, v in doc["links"].items()}
        row["document"] = json.dumps(doc)
        row["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}+00:00"
        batch.append(row)
        if i == (total - have) // 2:
            wanted_id = row["id"]
    columns = list(batch[0].keys())
    con.executemany(
        f"INSERT INTO executions ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
        [[r[c] for c in columns] for r in batch],
    )
    # One of them was created under an idempotency key.
    some = batch[len(batch) // 3]
    wanted_key = "nightly-import-2026-11-07"
    con.execute(
        "INSERT INTO idempotency_keys (workspace_id, connector_id, key, fingerprint, execution_id, created_at) "
        "VALUES (?, ?, ?, 'bench', ?, ?)",
        (some["workspace_id"], some["connector_id"], wanted_key, some["id"], some["created_at"]),
    )
    con.commit()
    count = con.execute("SELECT count(*) FROM executions").fetchone()[0]
    con.close()
    assert count == total, count
    return wanted_id, wanted_key


class Browser:
    """A signed-in session on one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = f"key={KEY}&next=/runs"
        self.conn.request("POST", "/sign-in", body=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = self.conn.getresponse()
        r.read()
        assert r.status == 303, r.status
        self.cookie = r.getheader("Set-Cookie").split(";")[0]

    def get(self, path: str) -> tuple[int, bytes, float]:
        start = time.perf_counter()
        self.conn.request("GET", path, headers={"Cookie": self.cookie})
        r = self.conn.getresponse()
        body = r.read()
        return r.status, body, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weir", help="the weir binary (default: build the release binary)")
    parser.add_argument("--executions", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    weir = harness.locate_weir(args.weir)
    work = Path(tempfile.mkdtemp(prefix="weir-console-bench-"))
    proc, port = start_server(weir, work / "data")
    try:
        api = Api(port)
        setup(api, work / "data" / "state.db")
        status, _ = api.call("PUT", "/connectors/loader/sql/draft",
                             json.dumps({"text": "CREATE VIEW output.people AS SELECT email, city FROM input.data "
                                         "WHERE email IS NOT NULL"}).encode(), "application/json")
        assert status in (200, 422), status
        runs = []
        for i in range(20):
            rows = "".join(f"p{i}-{n}@example.com,City {n}\n" for n in range(50))
            _, doc = api.call("POST", "/connectors/loader/runs?filename=people.csv",
                              f"email,city\n{rows}not-an-email,X\n".encode(), "text/csv")
            runs.append(doc["id"])
        for run in runs:
            wait_status(api, run, {"success", "partial_success", "failed"})
        wanted_id, wanted_key = fill(work / "data" / "state.db", args.executions)

        browser = Browser(port)
        lists = {
            "first page": "/runs",
            "status filter (failed)": "/runs?status=failed",
            "connector + trigger filter": "/runs?trigger=webhook&dry_run=live",
            "search by execution id": f"/runs?q={wanted_id}",
            "search by idempotency key": f"/runs?q={wanted_key}",
            "live refresh fragment": "/runs/rows?live=1",
        }
        timings = {}
        for label, path in lists.items():
            status, body, _ = browser.get(path)
            assert status == 200, (path, status)
            if "search" in label:
                assert body.count(b'href="/runs/0') == 1, (label, body[:2000])
            else:
                assert body.count(b"<tr data-status") == 50, (label, body.count(b"<tr data-status"))
            times = []
            for _ in range(args.requests):
                status, _, took = browser.get(path)
                assert status == 200
                times.append(took * 1000)
            timings[label] = {"p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2)}

        _, css_page, _ = browser.get("/runs")
        assets = re.findall(rb'(?:href|src)="(/assets/[^"]+)"', css_page)
        asset_bytes = sum(len(browser.get(a.decode())[1]) for a in assets)
        weights = {}
        for path in PAGES:
            status, body, _ = browser.get(path.replace("{run}", runs[0]))
            assert status == 200, (path, status)
            weights[path] = {"html": len(body), "with_css_js": len(body) + asset_bytes}

        print(f"runs list with {args.executions:,} executions ({args.requests} requests each, loopback, keep-alive)")
        print(f"{'list':32} {'p50 ms':>8} {'p99 ms':>8}")
        for label, t in timings.items():
            print(f"{label:32} {t['p50_ms']:8.2f} {t['p99_ms']:8.2f}")
        print(f"\npage weight (uncompressed; stylesheet + script {asset_bytes:,} bytes)")
        print(f"{'page':40} {'HTML':>8} {'total':>8}")
        for path, w in weights.items():
            print(f"{path:40} {w['html']:8,} {w['with_css_js']:8,}")
        saved = harness.write_results("console", {
            "machine": harness.machine_info(),
            "weir": harness.weir_version(weir),
            "executions": args.executions,
            "requests": args.requests,
            "runs_list": timings,
            "assets_bytes": asset_bytes,
            "pages": weights,
        })
        print(f"\nresults: {saved}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
