#!/usr/bin/env python3
"""A notification receiver for host/tests/notifications.rs: it checks each
request's Standard Webhooks signature with the reference `standardwebhooks`
package, answers as its plan says, and writes a JSON line per request to
`--log`, flushed at once so the test reads it while it runs.

Plans, per path:
  ok            answer 204 (the default)
  fail:N        answer 500 to the first N requests of each webhook-id, then 204
  redirect      answer 302 to /elsewhere
  slow:MS       wait MS milliseconds, then answer 204

It prints `listening on PORT` once it listens.
"""

import argparse
import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--plan", action="append", default=[], help="PATH=PLAN")
    args = parser.parse_args()
    plans = dict(p.split("=", 1) for p in args.plan)
    webhook = Webhook(args.secret)
    seen: Counter = Counter()
    lock = threading.Lock()
    log = open(args.log, "a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server name)
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                payload = webhook.verify(body, headers)
                verified = True
            except WebhookVerificationError as e:
                payload, verified = {"error": str(e)}, False
            plan = plans.get(self.path, "ok")
            with lock:
                seen[(self.path, headers.get("webhook-id"))] += 1
                attempt = seen[(self.path, headers.get("webhook-id"))]
            status = 204
            if plan.startswith("fail:") and attempt <= int(plan[5:]):
                status = 500
            elif plan == "redirect":
                status = 302
            elif plan.startswith("slow:"):
                time.sleep(int(plan[5:]) / 1000)
            entry = {
                "path": self.path,
                "id": headers.get("webhook-id"),
                "verified": verified,
                "attempt": attempt,
                "answered": status,
                "type": payload.get("type") if isinstance(payload, dict) else None,
                "status": (payload.get("data") or {}).get("status") if isinstance(payload, dict) else None,
                "execution": (payload.get("data") or {}).get("id") if isinstance(payload, dict) else None,
                "at": time.time(),
            }
            with lock:
                log.write(json.dumps(entry) + "\n")
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
