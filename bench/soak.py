#!/usr/bin/env python3
"""Weir under many connectors at once, on loopback, then an audit.

A fresh `weir serve` gets `--connectors` upload connectors and
`--hook-connectors` webhook connectors (1 s batch window), all loading into
two shared objects. Then `--clients` threads at once send:

- `--uploads` CSV uploads (`--rows` rows each, keys unique per upload), each
  with an `Idempotency-Key`; a share of them (`--retry-ratio`) is sent a
  second time with the same key, at the same moment, from another thread;
- a cancel right after the trigger for `--cancel-ratio` of the uploads;
- `--webhooks` webhook payloads, half signed (Standard Webhooks), half with
  a key; a share is delivered twice with the same `webhook-id` or key;
- status polls of the executions created so far, from `--pollers` threads.

When everything is sent it waits for every execution to end and checks:

1. every accepted upload produced exactly one execution (both answers of a
   retried key name the same one), and the connectors hold no other;
2. every execution reached a terminal status; none failed;
3. the `item` records are exactly the rows of the uploads that succeeded,
   plus a subset of the rows of each canceled one; every execution's
   `created` count equals the records with its keys; no key twice;
4. every accepted webhook is one `event` record, exactly once, and the
   webhook executions' `created` counts add up to the distinct webhooks.

It prints requests/s held during the send phase, the error rate of valid
requests (must be 0) and p50/p99 latency per request kind, and exits 1 when
an invariant does not hold.

    python3 bench/soak.py [--weir PATH] [--uploads 2000] [--webhooks 2000] [--clients 200]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import harness
from api import KEY, percentile, start_server

SECRET_ENV = "WEIR_WEBHOOK_SECRET_SOAK"
SECRET = "whsec_" + base64.b64encode(b"weir soak webhook secret, 32 bytes").decode()
TERMINAL = {"success", "partial_success", "failed", "canceled"}


class Api:
    """A keep-alive client of one server; reconnects after a dropped connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, auth: bool = True) -> tuple[int, dict, dict | None]:
        all_headers = dict(headers or {})
        if auth:
            all_headers["Authorization"] = f"Bearer {KEY}"
        while True:
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.conn.request(method, "/api/v1" + path, body=body, headers=all_headers)
                r = self.conn.getresponse()
                data = r.read()
                break
            except (ConnectionError, http.client.HTTPException):
                # Only a keep-alive connection the server closed between
                # requests is retried (the request was never read); a new
                # connection that fails is an error of the server.
                self.conn.close()
                self.conn = None
                if not reused:
                    raise
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            doc = None
        return r.status, {k.lower(): v for k, v in r.getheaders()}, doc

    def json(self, method: str, path: str, doc: dict) -> tuple[int, dict | None]:
        status, _, body = self.request(method, path, json.dumps(doc).encode(), {"Content-Type": "application/json"})
        return status, body

    def pages(self, path: str) -> list[dict]:
        """Every item of a cursor-paged list."""
        out, cursor = [], None
        while True:
            sep = "&" if "?" in path else "?"
            page = f"{path}{sep}limit=500" + (f"&cursor={cursor}" if cursor else "")
            status, _, doc = self.request("GET", page)
            assert status == 200, (page, status, doc)
            out.extend(doc["data"])
            cursor = doc.get("next_cursor")
            if not cursor:
                return out


def load_def(scope: str, obj: str, fields: list[str]) -> tuple[list[dict], list[dict]]:
    variables = [{"name": f, "scope": scope, "column": f, "type": "string"} for f in fields]
    loads = [{"order": 1, "scope": scope, "object": obj,
              "match": [{"field": "key", "variable": "key", "no_match": "create_new",
                         "single_match": "update_current", "multiple_match": "do_not_upload"}],
              "fields": [{"field": f, "variables": [f]} for f in fields]}]
    return variables, loads


def setup(api: Api, connectors: int, hooks: int) -> None:
    for name, other in (("item", "value"), ("event", "webhook_id")):
        status, body = api.json("POST", "/objects", {"name": name, "fields": [
            {"name": "key", "type": "text", "unique": True}, {"name": other, "type": "text"}]})
        assert status == 201, body
    _, _, csv_sample = api.request("POST", "/files?filename=data.csv", b"key,value\nk,v\n", {"Content-Type": "text/csv"})
    hook_sample = (b'{"received_at":"2026-01-01T00:00:00Z","webhook_id":"s","content_type":"text/plain",'
                   b'"querystring":"","body":"k"}\n')
    _, _, jsonl_sample = api.request("POST", "/files?filename=webhooks.jsonl", hook_sample,
                                     {"Content-Type": "application/x-ndjson"})
    limits = {"max_concurrency": 4, "max_runtime": "10m"}
    docs = []
    for i in range(connectors):
        variables, loads = load_def("items", "item", ["key", "value"])
        docs.append({"api_name": f"up_{i}", "type": "spreadsheet", "sample_file_id": csv_sample["id"],
                     "sql": {"text": "CREATE VIEW output.items AS SELECT key, value FROM input.data"},
                     "variables": variables, "loads": loads, "limits": limits})
    for i in range(hooks):
        variables, loads = load_def("events", "event", ["key", "webhook_id"])
        docs.append({"api_name": f"hook_{i}", "type": "webhook", "sample_file_id": jsonl_sample["id"],
                     "webhook": {"batch_window": "1s", "secret_env": SECRET_ENV},
                     "sql": {"text": "CREATE VIEW output.events AS SELECT body AS key, webhook_id FROM input.webhooks"},
                     "variables": variables, "loads": loads, "limits": limits})
    for doc in docs:
        name = doc["api_name"]
        status, body = api.json("POST", "/connectors", doc)
        assert status == 201, body
        status, body = api.json("POST", f"/connectors/{name}/sql/publish", {})
        assert status == 200, body
        status, body = api.json("PATCH", f"/connectors/{name}", {"status": "operational"})
        assert status == 200, body


def sign(msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class Recorder:
    """Latencies and unexpected answers per request kind, across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)

    def timed(self, kind: str, call, ok: set[int]):
        t = time.perf_counter()
        try:
            status, headers, doc = call()
        except (OSError, http.client.HTTPException) as e:
            status, headers, doc = 0, {}, f"no answer: {e!r}"
        ms = (time.perf_counter() - t) * 1000
        with self.lock:
            self.latency[kind].append(ms)
            if status not in ok:
                self.errors[kind].append(f"{status} {doc}")
        return status, headers, doc


class Soak:
    def __init__(self, port: int, args: argparse.Namespace) -> None:
        self.port = port
        self.args = args
        self.rec = Recorder()
        self.local = threading.local()
        self.lock = threading.Lock()
        # Idempotency key -> execution ids answered for it.
        self.upload_answers: dict[str, set[str]] = defaultdict(set)
        self.upload_rows: dict[str, int] = {}
        self.cancel_answers: dict[str, int] = {}
        # webhook id -> the `duplicate` flag of each of its answers
        self.hooks: dict[str, list[bool]] = defaultdict(list)
        self.known: list[str] = []
        self.sending = True

    def api(self) -> Api:
        if not hasattr(self.local, "api"):
            self.local.api = Api(self.port)
        return self.local.api

    def upload(self, n: int, connector: str, cancel: bool) -> None:
        key = f"soak-{n}"
        rows = self.args.rows
        body = ("key,value\n" + "".join(f"u{n}-{r},{n}:{r}\n" for r in range(rows))).encode()
        status, headers, doc = self.rec.timed(
            "upload", lambda: self.api().request(
                "POST", f"/connectors/{connector}/runs?filename=data.csv", body,
                {"Content-Type": "text/csv", "Idempotency-Key": key}), {202})
        if status != 202:
            return
        ex = doc["id"]
        with self.lock:
            self.upload_answers[key].add(ex)
            self.upload_rows[key] = rows
            self.known.append(ex)
        if cancel:
            status, _, _ = self.rec.timed("cancel", lambda: self.api().request("POST", f"/executions/{ex}/cancel"),
                                          {202, 409})
            with self.lock:
                self.cancel_answers[ex] = status

    def webhook(self, n: int, connector: str) -> None:
        body = f"w{n}".encode()
        if n % 2 == 0:
            msg_id = f"msg-{n}"
            ts = int(time.time())
            headers = {"Content-Type": "text/plain", "webhook-id": msg_id, "webhook-timestamp": str(ts),
                       "webhook-signature": sign(msg_id, ts, body)}
            auth = False
        else:
            msg_id = f"key-{n}"
            headers = {"Content-Type": "text/plain", "Idempotency-Key": msg_id}
            auth = True
        status, _, doc = self.rec.timed(
            "webhook", lambda: self.api().request("POST", f"/connectors/{connector}/webhook", body, headers, auth),
            {202})
        if status == 202:
            with self.lock:
                self.hooks[msg_id].append(bool(doc.get("duplicate")))

    def poll(self) -> None:
        rng = random.Random()
        while self.sending:
            with self.lock:
                ex = rng.choice(self.known) if self.known else None
            if ex is None:
                time.sleep(0.01)
                continue
            self.rec.timed("status", lambda: self.api().request("GET", f"/executions/{ex}"), {200})

    def tasks(self) -> list:
        a, rng = self.args, random.Random(7)
        out = []
        for n in range(a.uploads):
            connector = f"up_{n % a.connectors}"
            cancel = rng.random() < a.cancel_ratio
            out.append((self.upload, n, connector, cancel))
            if rng.random() < a.retry_ratio:
                out.append((self.upload, n, connector, False))
        for n in range(a.webhooks):
            connector = f"hook_{n % a.hook_connectors}"
            out.append((self.webhook, n, connector))
            if rng.random() < a.retry_ratio:
                out.append((self.webhook, n, connector))
        rng.shuffle(out)
        return out

    def send(self) -> float:
        tasks = self.tasks()
        pollers = [threading.Thread(target=self.poll) for _ in range(self.args.pollers)]
        t = time.perf_counter()
        for p in pollers:
            p.start()
        with cf.ThreadPoolExecutor(self.args.clients) as pool:
            for f in [pool.submit(task[0], *task[1:]) for task in tasks]:
                f.result()
        self.sending = False
        for p in pollers:
            p.join()
        return time.perf_counter() - t


def wait_terminal(api: Api, connectors: list[str], timeout: float) -> list[dict]:
    """Every live execution of `connectors`, once none is left running."""
    end = time.time() + timeout
    while True:
        executions = [e for c in connectors for e in api.pages(f"/connectors/{c}/executions?is_dry_run=false")]
        pending = [e for e in executions if e["status"] not in TERMINAL]
        if not pending:
            return executions
        if time.time() > end:
            raise SystemExit(f"{len(pending)} executions are not terminal after {timeout:.0f} s")
        time.sleep(1)


def load_count(doc: dict) -> dict:
    loads = [s for s in doc["step_progress"] if s["stage"] == "load"][0]["steps"]
    return loads[0] if loads else {"created": 0, "updated": 0}


def audit(api: Api, soak: Soak, args: argparse.Namespace) -> list[str]:
    problems: list[str] = []
    ups = [f"up_{i}" for i in range(args.connectors)]
    hooks = [f"hook_{i}" for i in range(args.hook_connectors)]
    # Webhook batches close one window after their last payload.
    time.sleep(2.5)
    executions = wait_terminal(api, ups + hooks, args.timeout)
    by_id = {e["id"]: e for e in executions}

    # 1. One execution per accepted upload.
    upload_execs = {e["id"] for e in executions if e["trigger_type"] == "file_upload"}
    answered = set()
    for key, ids in soak.upload_answers.items():
        if len(ids) != 1:
            problems.append(f"idempotency key {key} answered {len(ids)} executions: {sorted(ids)}")
        answered |= ids
    if answered != upload_execs:
        problems.append(f"{len(upload_execs - answered)} upload executions nobody was answered, "
                        f"{len(answered - upload_execs)} answered executions missing")

    # 2. Terminal, none failed.
    statuses = defaultdict(int)
    for e in executions:
        statuses[e["status"]] += 1
        if e["status"] == "failed":
            problems.append(f"execution {e['id']} failed: {e.get('error')}")
    for ex, status in soak.cancel_answers.items():
        if status == 202 and by_id.get(ex, {}).get("status") not in ("canceled", "success"):
            problems.append(f"execution {ex} was canceled with 202 and ended {by_id.get(ex, {}).get('status')}")

    # 3. Item records against the uploads.
    items = api.pages("/objects/item/records")
    keys = defaultdict(int)
    per_upload: dict[int, int] = defaultdict(int)
    for r in items:
        keys[r["key"]] += 1
        m = re.fullmatch(r"u(\d+)-(\d+)", r["key"])
        if not m or r["value"] != f"{m.group(1)}:{m.group(2)}":
            problems.append(f"record {r} was never sent")
            continue
        per_upload[int(m.group(1))] += 1
    twice = [k for k, c in keys.items() if c > 1]
    if twice:
        problems.append(f"{len(twice)} item keys are stored more than once, e.g. {twice[:3]}")
    for key, ids in soak.upload_answers.items():
        n = int(key.removeprefix("soak-"))
        doc = by_id.get(next(iter(ids)))
        if doc is None:
            continue
        stored, created = per_upload.get(n, 0), load_count(doc)["created"]
        if doc["status"] != "canceled" and stored != soak.upload_rows[key]:
            problems.append(f"upload {n} ended {doc['status']} with {stored} of {soak.upload_rows[key]} records")
        if stored != created:
            problems.append(f"execution {doc['id']} counts {created} created, {stored} records hold its keys")

    # 4. Webhooks: each accepted one exactly once.
    events = api.pages("/objects/event/records")
    event_keys = defaultdict(int)
    for r in events:
        event_keys[r["key"]] += 1
    for msg_id, dup_flags in soak.hooks.items():
        n = msg_id.split("-")[1]
        if event_keys.get(f"w{n}", 0) != 1:
            problems.append(f"webhook {msg_id} is stored {event_keys.get(f'w{n}', 0)} times")
        if sorted(dup_flags) != [False] + [True] * (len(dup_flags) - 1):
            problems.append(f"webhook {msg_id} answered duplicate = {dup_flags}")
    if len(events) != len(soak.hooks):
        problems.append(f"{len(events)} event records for {len(soak.hooks)} accepted webhooks")
    hook_created = sum(load_count(e)["created"] for e in executions if e["trigger_type"] == "webhook")
    if hook_created != len(soak.hooks):
        problems.append(f"webhook executions count {hook_created} created for {len(soak.hooks)} webhooks")

    print(f"executions: {len(executions)} ({dict(statuses)}); item records {len(items)}, "
          f"event records {len(events)}; webhook batches "
          f"{sum(1 for e in executions if e['trigger_type'] == 'webhook')}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weir", help="path of the weir binary (default: build it)")
    parser.add_argument("--uploads", type=int, default=2000)
    parser.add_argument("--webhooks", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=20, help="rows per upload")
    parser.add_argument("--connectors", type=int, default=20)
    parser.add_argument("--hook-connectors", type=int, default=10)
    parser.add_argument("--clients", type=int, default=200, help="concurrent sending threads")
    parser.add_argument("--pollers", type=int, default=8)
    parser.add_argument("--cancel-ratio", type=float, default=0.1)
    parser.add_argument("--retry-ratio", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the runs to end")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    weir = harness.locate_weir(args.weir)
    data_dir = Path(tempfile.mkdtemp(prefix="weir-soak-"))
    # The server's own defaults (4 workers, a SQL thread per core per run).
    proc, port = start_server(weir, data_dir, WEIR_WORKERS="4", WEIR_THREADS_PER_RUN=str(os.cpu_count() or 1),
                              **{SECRET_ENV: SECRET})
    try:
        api = Api(port)
        setup(api, args.connectors, args.hook_connectors)
        soak = Soak(port, args)
        seconds = soak.send()
        total = sum(len(v) for v in soak.rec.latency.values())
        errors = sum(len(v) for v in soak.rec.errors.values())
        print(f"sent {total} requests in {seconds:.1f} s with {args.clients} clients: "
              f"{total / seconds:.0f} req/s, errors {errors} ({100 * errors / max(total, 1):.2f} %)")
        results: dict = {"seconds": seconds, "requests": total, "requests_per_s": total / seconds,
                         "errors": errors, "args": vars(args), "kinds": {}}
        for kind, lat in sorted(soak.rec.latency.items()):
            results["kinds"][kind] = {"n": len(lat), "p50_ms": statistics.median(lat),
                                      "p99_ms": percentile(lat, 99), "errors": len(soak.rec.errors[kind])}
            print(f"  {kind:8} n {len(lat):6}  p50 {statistics.median(lat):7.1f} ms  "
                  f"p99 {percentile(lat, 99):7.1f} ms  errors {len(soak.rec.errors[kind])}")
            for e in soak.rec.errors[kind][:5]:
                print(f"    {e}")
        t = time.perf_counter()
        problems = audit(api, soak, args)
        results["drain_and_audit_s"] = time.perf_counter() - t
        results["problems"] = problems
        results["machine"] = harness.machine_info()
        for p in problems[:50]:
            print("PROBLEM:", p)
        print("invariants:", "hold" if not problems and not errors else f"{len(problems)} problems")
        print("results:", harness.write_results("soak", results))
        if problems or errors:
            raise SystemExit(1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if args.keep:
            print("data directory:", data_dir)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
