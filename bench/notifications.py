#!/usr/bin/env python3
"""Notifications of ended executions, in one run on loopback:

1. delivery latency: from the end being stored (with its notification) to
   the receiver having answered, over N runs of a small connector, one
   after another (p50/p99);
2. a slow receiver (200 ms per answer) does not slow the runs: the same
   burst of runs on a connector without notifications and on one notifying
   that receiver, alternated, runs/s of each and their ratio, and the
   deliveries/s the slow receiver got.

The receiver checks nothing (the tests check signatures); it records when
it answered each `webhook-id`.

    python3 bench/notifications.py [--weir PATH] [--runs 200] [--burst 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import harness
from api import Api, percentile, start_server, wait_status

SECRETS_KEY = "c2VjcmV0cyBrZXkgb2YgdGhlIHRlc3RzLCAzMiBiISE="
SECRET = "whsec_bm90aWZpY2F0aW9ucyBvZiB0aGUgdGVzdHMsIDMyIGJ5dGVz"
ENDED = {"success", "partial_success", "failed", "canceled"}


class Receiver:
    """A loopback receiver answering 204 after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.answered: dict[str, float] = {}
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", "0")))
                time.sleep(delay)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with lock:
                    outer.answered[self.headers["webhook-id"]] = time.time()

            def log_message(self, *_: object) -> None:
                pass

        ThreadingHTTPServer.daemon_threads = True
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def connector(api: Api, name: str, notifications: list[dict]) -> None:
    _, f = api.call("POST", "/files?filename=s.csv", b"a,b\n1,2\n", "text/csv")
    doc = {"api_name": name, "type": "spreadsheet", "sample_file_id": f["id"],
           "sql": {"text": "CREATE VIEW output.rows AS SELECT a, b FROM input.data"},
           "limits": {"max_concurrency": 100}, "notifications": notifications}
    status, body = api.json("POST", "/connectors", doc)
    assert status == 201, body
    status, body = api.json("POST", f"/connectors/{name}/sql/publish", {})
    assert status == 200, body
    status, body = api.json("PATCH", f"/connectors/{name}", {"status": "operational"})
    assert status == 200, body


def trigger(api: Api, name: str) -> str:
    status, doc = api.call("POST", f"/connectors/{name}/runs?filename=in.csv", b"a,b\n1,2\n3,4\n", "text/csv")
    assert status == 202, doc
    return doc["id"]


def burst(api: Api, name: str, n: int) -> float:
    """Runs/s of `n` runs triggered at once, to the last one's end."""
    start = time.perf_counter()
    ids = [trigger(api, name) for _ in range(n)]
    for ex in ids:
        wait_status(api, ex, ENDED)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weir", help="the weir binary (default: build the release binary)")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    weir = harness.locate_weir(args.weir)
    quick, slow = Receiver(0.0), Receiver(0.2)
    work = Path(tempfile.mkdtemp(prefix="weir-notify-bench-"))
    proc, port = start_server(weir, work / "data", WEIR_SECRETS_KEY=SECRETS_KEY,
                              WEIR_NOTIFICATION_ALLOWED="127.0.0.1", WEIR_WORKERS="2")
    try:
        api = Api(port)
        status, body = api.json("PUT", "/secrets/hooks", {"value": SECRET})
        assert status in (200, 201), body
        connector(api, "told", [{"on": ["success", "partial_success", "failed"],
                                 "url": f"http://127.0.0.1:{quick.port}/n", "secret": "hooks"}])
        connector(api, "plain", [])
        connector(api, "slow_told", [{"on": ["success", "partial_success", "failed"],
                                      "url": f"http://127.0.0.1:{slow.port}/n", "secret": "hooks"}])

        # 1. Latency, one run after another.
        latencies = []
        for _ in range(args.runs):
            ex = trigger(api, "told")
            wait_status(api, ex, ENDED)
            deadline = time.time() + 30
            while f"msg_{ex}_0" not in quick.answered:
                assert time.time() < deadline, f"no delivery for {ex}"
                time.sleep(0.001)
            _, listed = api.call("GET", f"/executions/{ex}/notifications")
            stored = datetime.fromisoformat(listed["data"][0]["created_at"]).timestamp()
            latencies.append((quick.answered[f"msg_{ex}_0"] - stored) * 1000)

        # 2. Runs with and without a slow receiver, alternated.
        plain, told = [], []
        for _ in range(2):
            plain.append(burst(api, "plain", args.burst))
            before = len(slow.answered)
            t0 = time.time()
            told.append(burst(api, "slow_told", args.burst))
            # Every delivery of the burst, then deliveries/s.
            deadline = time.time() + 120
            while len(slow.answered) < before + args.burst:
                assert time.time() < deadline, "the slow receiver did not get every notification"
                time.sleep(0.01)
            deliveries = args.burst / (max(list(slow.answered.values())[before:]) - t0)
        runs_plain, runs_told = max(plain), max(told)

        print(f"delivery latency, end stored -> receiver answered ({args.runs} runs): "
              f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms")
        print(f"runs/s, {args.burst} at once: without notifications {runs_plain:.1f}, "
              f"notifying a 200 ms receiver {runs_told:.1f} (ratio {runs_told / runs_plain:.2f}); "
              f"the slow receiver got {deliveries:.1f} deliveries/s")
        saved = harness.write_results("notifications", {
            "machine": harness.machine_info(),
            "weir": harness.weir_version(weir),
            "latency_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "runs": args.runs},
            "runs_per_s": {"plain": plain, "notifying_slow_receiver": told, "ratio": runs_told / runs_plain},
            "slow_receiver_deliveries_per_s": deliveries,
        })
        print(f"results: {saved}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
