#!/usr/bin/env python3
"""Reading a PostgreSQL table through a source, against `psql \\copy`.

A throwaway PostgreSQL cluster (started here, on loopback) holds a table of
1M orders. Weir reads it through a `postgres` source and writes it as CSV
(`CREATE VIEW output.orders AS SELECT * FROM pg.orders`, `weir run`);
`psql` copies the same query to a CSV file with `\\copy`, the fastest way
out of the database. Both run as child processes, timed from start to exit,
alternating; the throughput ratio of the medians is psql's time over
Weir's, target >= 0.5.

    python3 bench/pg_source.py                         # 1M rows, 5 timed runs
    python3 bench/pg_source.py --rows 200000 --repeat 3 --weir target/release/weir
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import harness

WORK_DIR = harness.WORK_DIR / "pg_source"
PASSWORD = "bench-password"
QUERY = "SELECT id, customer, email, amount, paid, created_at FROM orders"


def pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        sys.exit("PostgreSQL is not installed (apt-get install postgresql)")
    return versions[-1].parent


def as_postgres(cmd: list[str]) -> list[str]:
    """Database servers refuse to run as root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, directory: Path):
        self.bin = pg_bin()
        self.dir = directory
        self.port = free_port()
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres")
        data = directory / "data"
        subprocess.run(as_postgres([str(self.bin / "initdb"), "-D", str(data), "-U", "postgres",
                                    "--auth-local=trust", "--auth-host=scram-sha-256"]),
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(as_postgres([str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(directory / "log"),
                                    "-o", f"-p {self.port} -k {directory} -c listen_addresses=127.0.0.1 "
                                          "-c shared_buffers=512MB", "-w", "start"]),
                       check=True, stdout=subprocess.DEVNULL)

    def load(self, rows: int) -> None:
        self.psql("postgres", f"CREATE ROLE weir LOGIN PASSWORD '{PASSWORD}'")
        # CREATE DATABASE cannot share a transaction with anything.
        self.psql("postgres", "CREATE DATABASE shop OWNER weir")
        self.psql("shop", f"""
            CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, email text,
                                 amount double precision, paid boolean, created_at timestamptz);
            INSERT INTO orders SELECT i, 'Customer ' || (i % 50000), 'customer' || (i % 50000) || '@example.com',
                   (i % 10000) / 100.0, i % 4 <> 0, timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second'
              FROM generate_series(1, {rows}) i;
            ALTER TABLE orders OWNER TO weir;""")
        self.psql("shop", "VACUUM ANALYZE orders")

    def database(self, name: str) -> str:
        """A new empty database `name` owned by `weir`, and its URL."""
        self.psql("postgres", f"DO $$ BEGIN CREATE ROLE weir LOGIN PASSWORD '{PASSWORD}'; "
                              "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        self.psql("postgres", f"CREATE DATABASE {name} OWNER weir")
        return f"postgres://weir:{PASSWORD}@127.0.0.1:{self.port}/{name}?sslmode=disable"

    def psql(self, db: str, sql: str) -> None:
        subprocess.run([str(self.bin / "psql"), "-h", str(self.dir), "-p", str(self.port), "-U", "postgres",
                        "-d", db, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True, stdout=subprocess.DEVNULL)

    def url(self) -> str:
        return f"postgres://weir:{PASSWORD}@127.0.0.1:{self.port}/shop?sslmode=disable"

    def stop(self) -> None:
        subprocess.run(as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def job_dir(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "connector.toml").write_text(
        'api_name = "pg_bench"\ntype = "schedule"\n[schedule]\ncron = "0 0 * * * *"\n'
        '[sql]\nfile = "script.sql"\n[limits]\nmax_runtime = "30m"\nmax_memory = "4GiB"\n'
        '[[sources]]\nname = "pg"\nkind = "postgres"\nsecret = "bench_db"\ntables = ["orders"]\n'
    )
    (directory / "script.sql").write_text(
        "CREATE VIEW output.orders AS SELECT id, customer, email, amount, paid, created_at FROM pg.orders")
    return directory


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weir", help="a built weir binary (default: build one in release)")
    args = parser.parse_args(argv)
    weir = harness.locate_weir(args.weir)
    cluster = Cluster(WORK_DIR / "cluster")
    try:
        cluster.load(args.rows)
        job = job_dir(WORK_DIR / "job")
        weir_out, psql_out = WORK_DIR / "weir", WORK_DIR / "psql.csv"
        weir_cmd = [str(weir), "run", str(job), "--out", str(weir_out), "--threads", str(args.threads), "--json"]
        psql_cmd = [str(cluster.bin / "psql"), f"postgresql://weir@127.0.0.1:{cluster.port}/shop?sslmode=disable",
                    "-v", "ON_ERROR_STOP=1", "-q", "-c", f"\\copy ({QUERY}) TO '{psql_out}' CSV HEADER"]
        env = {"WEIR_SECRET_BENCH_DB": cluster.url(), "PGPASSWORD": PASSWORD}
        times = harness.alternate({"weir": weir_cmd, "psql": psql_cmd}, args.repeat, WORK_DIR, weir_out, env)
        counts = [count_lines(weir_out / "output" / "orders.csv"), count_lines(psql_out)]
        if counts[0] != counts[1] or counts[0] != args.rows + 1:
            sys.exit(f"Weir wrote {counts[0]} lines and psql {counts[1]}, for {args.rows} rows")
    finally:
        cluster.stop()
    harness.report_ratio(
        "pg_source", f"PostgreSQL source, {args.rows} rows, {args.threads} thread(s), median of {args.repeat} runs",
        times, "weir", "psql", args.rows, 0.5, "Weir/psql \\copy",
        {"threads": args.threads, "repeat": args.repeat, "weir_version": harness.weir_version(weir)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
