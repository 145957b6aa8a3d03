#!/usr/bin/env python3
"""The HTTP API under load, on loopback, in one run:

1. status: `GET /executions/{id}` of a finished execution driven by `wrk`
   (requests/s, p50/p99 latency);
2. triggers: small-file uploads to `POST /connectors/{c}/runs` from several
   client threads (triggers/s accepted, p50/p99 of the 202);
3. cancel latency: the time from `POST /executions/{id}/cancel` to the
   `canceled` status being persisted in the state database, over N runs
   canceled in each stage: intake (a workbook being read), SQL and load.
   (The transform stage is measured by `plugin.py`; variables are converted
   batch by batch between loads, so the load case covers them.)

The server is the `weir` binary (`--weir`, else built), started on a fresh
data directory. Targets (issue): status >= 10k req/s with p99 <= 10 ms,
cancel p99 <= 100 ms.

    python3 bench/api.py [--weir PATH] [--seconds 10] [--cancels 50] [--backends embedded,postgres]

With `--backends embedded,postgres` it measures both, one after the other in
one run: the embedded default, then the state in PostgreSQL and the files in
an S3 bucket (moto), each started for the bench (psycopg reads the state).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
import zipfile
from io import BytesIO
from pathlib import Path

import harness
from backends import Backend

KEY = "weir_bench_admin_key_0123456789abcdef0123456789"


class Api:
    """A tiny keep-alive client of one server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        headers = {"Authorization": f"Bearer {KEY}"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            self.conn.request(method, "/api/v1" + path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            # The server closes a keep-alive connection left idle past its
            # header timeout; nothing of this request was read: send it again.
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            self.conn.request(method, "/api/v1" + path, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            doc = None
        return r.status, doc

    def json(self, method: str, path: str, doc: dict) -> tuple[int, dict]:
        return self.call(method, path, json.dumps(doc).encode(), "application/json")


def start_server(weir: Path, data_dir: Path, **env: str) -> tuple[subprocess.Popen, int]:
    """`weir serve` on `data_dir` and its port; `env` adds to or overrides the
    benchmark settings (2 workers, 1 SQL thread per run)."""
    env = {**os.environ, "WEIR_BOOTSTRAP_KEY": KEY, "WEIR_WORKERS": "2", "WEIR_THREADS_PER_RUN": "1",
           "WEIR_LOG": "warn", **env}
    proc = subprocess.Popen(
        [str(weir), "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.match(r"weir listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(m.group(1))
    raise SystemExit("weir serve did not start")


def wait_status(api: Api, ex: str, wanted: set[str], timeout: float = 600) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        _, doc = api.call("GET", f"/executions/{ex}")
        if doc["status"] in wanted:
            return doc
        time.sleep(0.002)
    raise SystemExit(f"execution {ex} stuck: {doc}")


class StateDb:
    """The server's state database, read and poked by the benches: the data
    directory's SQLite file, or a PostgreSQL database (`postgres://…`)."""

    def __init__(self, where: Path | str):
        self.postgres = isinstance(where, str)
        if self.postgres:
            import psycopg  # only the PostgreSQL runs need it
            self.con = psycopg.connect(where, autocommit=True)
        else:
            self.con = sqlite3.connect(where)

    def one(self, sql: str, *params: object) -> tuple:
        if self.postgres:
            sql = sql.replace("?", "%s")
        row = self.con.execute(sql, params).fetchone()
        return row

    def execute(self, sql: str) -> None:
        self.con.execute(sql)
        if not self.postgres:
            self.con.commit()

    def close(self) -> None:
        self.con.close()


def setup(api: Api, db: Path | str) -> None:
    status, _ = api.json("POST", "/objects", {"name": "contact", "fields": [
        {"name": "email", "type": "email", "unique": True}, {"name": "city", "type": "text"}]})
    assert status == 201, status
    sample = b"email,city\na@example.com,X\n"
    _, f = api.call("POST", "/files?filename=s.csv", sample, "text/csv")
    loads = [{"order": 1, "scope": "people", "object": "contact",
              "match": [{"field": "email", "variable": "email", "no_match": "create_new",
                         "single_match": "update_current", "multiple_match": "do_not_upload"}],
              "fields": [{"field": "email", "variables": ["email"]}, {"field": "city", "variables": ["city"]}]}]
    variables = [{"name": "email", "scope": "people", "column": "email", "type": "email"},
                 {"name": "city", "scope": "people", "column": "city", "type": "string"}]
    connectors = {
        "small": {"sql": "CREATE VIEW output.people AS SELECT email, city FROM input.data", "loads": [], "variables": []},
        "loader": {"sql": "CREATE VIEW output.people AS SELECT email, city FROM input.data",
                   "loads": loads, "variables": variables},
        "slow": {"sql": "CREATE TABLE output.total AS SELECT count(*) AS n FROM generate_series(1, 20000000000) AS t(v) WHERE v % 7 = 3",
                 "loads": [], "variables": []},
    }
    for name, c in connectors.items():
        doc = {"api_name": name, "type": "spreadsheet", "sample_file_id": f["id"], "sql": {"text": c["sql"]},
               "variables": c["variables"], "loads": c["loads"], "limits": {"max_concurrency": 100, "max_runtime": "1h"}}
        status, body = api.json("POST", "/connectors", doc)
        assert status == 201, body
        if name == "slow":
            # Publishing dry-runs the script, which would take minutes.
            con = StateDb(db)
            con.execute("UPDATE connectors SET live_version = 1, draft_version = 2 WHERE api_name = 'slow'")
            con.execute("INSERT INTO sql_versions SELECT connector_id, 2, text, created_at, NULL FROM sql_versions "
                        "WHERE connector_id = (SELECT id FROM connectors WHERE api_name = 'slow')")
            con.close()
        else:
            status, body = api.json("POST", f"/connectors/{name}/sql/publish", {})
            assert status == 200, body
        status, body = api.json("PATCH", f"/connectors/{name}", {"status": "operational"})
        assert status == 200, body


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def bench_status(port: int, ex: str, seconds: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {KEY}",
         f"http://127.0.0.1:{port}/api/v1/executions/{ex}"],
        capture_output=True, text=True, check=True).stdout

    def latency(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests_per_s": rps, "p50_ms": latency("50"), "p99_ms": latency("99"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def bench_triggers(port: int, seconds: int, threads: int = 4) -> dict:
    body = b"email,city\nx@example.com,Y\n"
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.time() + seconds

    def client() -> None:
        api = Api(port)
        while time.time() < stop:
            t = time.perf_counter()
            status, _ = api.call("POST", "/connectors/small/runs?filename=t.csv", body, "text/csv")
            dt = (time.perf_counter() - t) * 1000
            with lock:
                if status == 202:
                    latencies.append(dt)
                else:
                    errors[0] += 1

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"triggers_per_s": len(latencies) / seconds, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "errors": errors[0]}


def drain_queue(api: Api, db: Path | str) -> None:
    con = StateDb(db)
    while con.one("SELECT count(*) FROM executions WHERE status IN ('queued','running','canceling')")[0]:
        time.sleep(0.2)
    con.close()


def wait_in_stage(api: Api, ex: str, stage: int) -> None:
    """Waits until execution `ex` is running in `step_progress[stage]`."""
    while True:
        _, d = api.call("GET", f"/executions/{ex}")
        if d["status"] == "running" and d["step_progress"][stage]["status"] == "running":
            return
        if d["status"] not in ("queued", "running"):
            raise SystemExit(f"the run left stage {stage} before it could be canceled: {d}")
        time.sleep(0.001)


def timed_cancel(api: Api, con: StateDb, ex: str) -> float:
    """Cancels `ex`; milliseconds until `canceled` is stored in the state database."""
    t = time.perf_counter()
    status, _ = api.call("POST", f"/executions/{ex}/cancel")
    assert status == 202, status
    while con.one("SELECT status FROM executions WHERE id = ?", ex)[0] != "canceled":
        time.sleep(0.0005)
    return (time.perf_counter() - t) * 1000


def workbook(rows: int) -> bytes:
    """An XLSX file with one sheet of `email,city` rows (inline strings)."""
    def row(r: int, values: tuple[str, str]) -> str:
        cells = "".join(f'<c r="{col}{r}" t="inlineStr"><is><t>{v}</t></is></c>' for col, v in zip("AB", values))
        return f'<row r="{r}">{cells}</row>'
    body = row(1, ("email", "city")) + "".join(row(i + 2, (f"u{i}@example.com", f"C{i % 50}")) for i in range(rows))
    sheet = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
             '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
             f"<sheetData>{body}</sheetData></worksheet>")
    ns = "http://schemas.openxmlformats.org"
    parts = {
        "[Content_Types].xml": '<?xml version="1.0" encoding="UTF-8"?>'
        f'<Types xmlns="{ns}/package/2006/content-types">'
        f'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        f'<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        "</Types>",
        "_rels/.rels": f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{ns}/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>'
        "</Relationships>",
        "xl/workbook.xml": f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{ns}/spreadsheetml/2006/main" '
        f'xmlns:r="{ns}/officeDocument/2006/relationships"><sheets><sheet name="people" sheetId="1" r:id="rId1"/></sheets></workbook>',
        "xl/_rels/workbook.xml.rels": f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{ns}/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>'
        "</Relationships>",
        "xl/worksheets/sheet1.xml": sheet,
    }
    out = BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in parts.items():
            z.writestr(name, text)
    return out.getvalue()


def cancel_latency(api: Api, db: Path | str, stage: str, n: int, big: bytes, book: bytes) -> list[float]:
    con = StateDb(db)
    out = []
    for _ in range(n):
        if stage == "intake":
            _, doc = api.call("POST", "/connectors/small/runs?filename=big.xlsx", book,
                              "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
            ex = doc["id"]
            wait_in_stage(api, ex, 0)
        elif stage == "sql":
            _, doc = api.call("POST", "/connectors/slow/runs?filename=x.csv", b"a\n1\n", "text/csv")
            ex = doc["id"]
            d = wait_status(api, ex, {"running"})
            time.sleep(0.05)
        else:
            _, doc = api.call("POST", "/connectors/loader/runs?filename=big.csv", big, "text/csv")
            ex = doc["id"]
            while True:
                _, d = api.call("GET", f"/executions/{ex}")
                steps = d["step_progress"][4]["steps"]
                if steps and steps[0]["created"] + steps[0]["updated"] > 0:
                    break
                if d["status"] not in ("queued", "running"):
                    raise SystemExit(f"the load run ended before it could be canceled: {d}")
                time.sleep(0.001)
        out.append(timed_cancel(api, con, ex))
    con.close()
    return out


def run_on(weir: Path, backend: Backend, args: argparse.Namespace) -> dict:
    """Every measurement on servers keeping their state and files in `backend`."""
    data_dir = Path(tempfile.mkdtemp(prefix="weir-api-bench-"))
    env, db = backend.fresh(data_dir)
    proc, port = start_server(weir, data_dir, **env)
    label = backend.name
    try:
        api = Api(port)
        setup(api, db)
        _, doc = api.call("POST", "/connectors/small/runs?filename=t.csv", b"email,city\na@example.com,X\n", "text/csv")
        wait_status(api, doc["id"], {"success", "partial_success"})
        status = bench_status(port, doc["id"], args.seconds)
        print(f"[{label}] status: {status['requests_per_s']:.0f} req/s, p50 {status['p50_ms']:.2f} ms, "
              f"p99 {status['p99_ms']:.2f} ms, non-2xx {status['non_2xx']}")
        triggers = bench_triggers(port, args.seconds)
        print(f"[{label}] triggers: {triggers['triggers_per_s']:.0f}/s accepted, p50 {triggers['p50_ms']:.1f} ms, "
              f"p99 {triggers['p99_ms']:.1f} ms, errors {triggers['errors']}")
        drain_queue(api, db)
        big = ("email,city\n" + "".join(f"u{i}@example.com,C{i % 50}\n" for i in range(300_000))).encode()
        book = workbook(300_000)
        results = {"status": status, "triggers": triggers}
        for stage in args.stages.split(","):
            lat = cancel_latency(api, db, stage, args.cancels, big, book)
            results[f"cancel_{stage}"] = {"n": len(lat), "p50_ms": statistics.median(lat),
                                          "p99_ms": percentile(lat, 99), "max_ms": max(lat)}
            print(f"[{label}] cancel in {stage}: p50 {statistics.median(lat):.1f} ms, "
                  f"p99 {percentile(lat, 99):.1f} ms (n = {len(lat)})")
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weir", help="path of the weir binary (default: build it)")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--cancels", type=int, default=50)
    parser.add_argument("--stages", default="intake,sql,load", help="the stages cancels are measured in")
    parser.add_argument("--backends", default="embedded",
                        help="embedded, postgres (state in PostgreSQL, files in an S3 bucket), or both: "
                             "embedded,postgres")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (apt-get install wrk)")
    weir = harness.locate_weir(args.weir)
    results: dict = {}
    for name in args.backends.split(","):
        backend = Backend(name)
        try:
            results[name] = run_on(weir, backend, args)
        finally:
            backend.stop()
    results["machine"] = harness.machine_info()
    print("results:", harness.write_results("api", results))


if __name__ == "__main__":
    main()
