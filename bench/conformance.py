#!/usr/bin/env python3
"""API conformance: schemathesis (PyPI) against the OpenAPI document of a
live `weir serve`, with a valid admin key.

The server starts on a fresh data directory, with an object, a sample file,
a published connector and an execution, so that the generated requests
reach real resources (`{connector}`, `{object}` and `{id}` are given to
schemathesis). Checks: no 5xx (`not_a_server_error`), every answer matches
its documented schema and content type, and every error answer is a problem
document (`errors_are_problem_json`, in `conformance_checks.py`). DELETE
operations are left out (they would remove the resources the rest needs),
as are the two binary uploads (a Wasm component and a package zip) that
schemathesis cannot generate.

    python3 bench/conformance.py [--weir PATH] [--seconds 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
from api import KEY, Api, start_server


def ensure_schemathesis() -> Path:
    st = shutil.which("st")
    if st:
        return Path(st)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "schemathesis"], check=True)
    st = shutil.which("st")
    if not st:
        raise SystemExit("schemathesis installed, but its `st` command is not on PATH")
    return Path(st)


def seed(api: Api) -> dict[str, str]:
    """An object, a file, a published connector and an execution."""

    def ok(answer: tuple[int, dict | None]) -> dict:
        status, doc = answer
        if status >= 300 or doc is None:
            raise SystemExit(f"seeding the server failed: {status} {doc}")
        return doc

    ok(api.json("POST", "/objects", {"name": "contact", "fields": [{"name": "email", "type": "email", "unique": True}]}))
    file = ok(api.call("POST", "/files?filename=contacts.csv", b"email,city\nada@example.com,London\n", "text/csv"))
    ok(
        api.json(
            "POST",
            "/connectors",
            {
                "api_name": "contacts",
                "type": "spreadsheet",
                "sample_file_id": file["id"],
                "sql": {"text": "CREATE VIEW output.people AS SELECT email, city FROM input.data"},
            },
        )
    )
    ok(api.json("POST", "/connectors/contacts/sql/publish", {}))
    run = ok(api.call("POST", "/connectors/contacts/runs?filename=more.csv&dry_run=true", b"email,city\nalan@example.com,Wilmslow\n", "text/csv"))
    return {"connector": "contacts", "object": "contact", "id": run["id"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weir", help="use this weir binary instead of building one with cargo")
    parser.add_argument("--seconds", type=int, default=200, help="schemathesis' time budget")
    args = parser.parse_args()
    st = ensure_schemathesis()
    weir = harness.locate_weir(args.weir)
    with tempfile.TemporaryDirectory(prefix="weir-conformance-") as tmp:
        work = Path(tmp)
        proc, port = start_server(weir, work / "data")
        try:
            base = f"http://127.0.0.1:{port}"
            ids = seed(Api(port))
            (work / "schemathesis.toml").write_text("[parameters]\n" + "".join(f'{k} = "{v}"\n' for k, v in ids.items()))
            cmd = [
                str(st), "run", f"{base}/api/v1/openapi.json", "--url", base,
                "-H", f"Authorization: Bearer {KEY}",
                "--checks",
                "not_a_server_error,response_schema_conformance,content_type_conformance,errors_are_problem_json",
                "--phases", "coverage,fuzzing", "--max-time", str(args.seconds), "-w", "2",
                "--exclude-method", "DELETE",
                "--exclude-path", "/api/v1/plugins",
                "--exclude-path", "/api/v1/connectors/{connector}/package",
            ]
            env = dict(os.environ, SCHEMATHESIS_HOOKS="conformance_checks",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(harness.BENCH_DIR), os.environ.get("PYTHONPATH")])))
            result = subprocess.run(cmd, cwd=work, env=env)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps({"schemathesis_exit": result.returncode}))
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
