"""The stores a bench can put `weir serve` on: `embedded` (the data
directory), `postgres` (PostgreSQL for the state and an S3-compatible
bucket, moto, for files and artifacts) or `postgres-state` (PostgreSQL for
the state, files in the data directory: what PostgreSQL costs apart from
the bucket), each started for the bench and stopped after it."""

from __future__ import annotations

import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pg_source


class Backend:
    """Where the servers of one bench keep their state and files."""

    def __init__(self, name: str):
        self.name = name
        self.cluster: pg_source.Cluster | None = None
        self.moto: subprocess.Popen | None = None
        self.endpoint = ""
        self.count = 0
        if name in ("postgres", "postgres-state"):
            self.cluster = pg_source.Cluster(Path(tempfile.mkdtemp(prefix="weir-bench-pg-")))
        if name == "postgres":
            port = pg_source.free_port()
            self.moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.endpoint = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    urllib.request.urlopen(self.endpoint, timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
        elif name not in ("embedded", "postgres-state"):
            raise SystemExit(f"unknown backend {name!r}: embedded, postgres or postgres-state")

    def fresh(self, data_dir: Path) -> tuple[dict[str, str], Path | str]:
        """The environment of servers on a fresh state and bucket, and where
        their state database is (the SQLite file or the PostgreSQL URL)."""
        if self.cluster is None:
            return {}, data_dir / "state.db"
        self.count += 1
        url = self.cluster.database(f"bench_{self.count}")
        if self.moto is None:
            return {"WEIR_DATABASE": url}, url
        bucket = f"bench-{self.count}"
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT"), timeout=10)
        env = {
            "WEIR_DATABASE": url,
            "WEIR_OBJECT_STORE": f"s3://{bucket}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        return env, url

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.moto is not None:
            self.moto.terminate()
            self.moto.wait(timeout=30)
