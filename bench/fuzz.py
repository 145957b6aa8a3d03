#!/usr/bin/env python3
"""Runs the fuzz targets (fuzz/README.md) for a bounded time each and
reports what they did: executions, executions/s, coverage, and the
findings saved under fuzz/artifacts/<target>/.

Needs cargo-fuzz and a nightly toolchain (`cargo install cargo-fuzz`). The
seed corpora are written first (fuzz/seeds.py). Not part of CI: a run
takes `--seconds` per target plus one build.

    python3 bench/fuzz.py [--seconds 300] [--targets sql_check,xlsx]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
TARGETS = ["sql_check", "xlsx", "intake", "connector_toml", "package_zip"]


def artifacts(target: str) -> list[str]:
    directory = FUZZ / "artifacts" / target
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def run(target: str, seconds: int) -> dict:
    before = set(artifacts(target))
    command = ["cargo", "+nightly", "fuzz", "run", "-s", "none", "-a", target, "--",
               f"-max_total_time={seconds}", "-rss_limit_mb=4096", "-timeout=30", "-print_final_stats=1"]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    log = done.stderr
    stats = {k: int(v) for k, v in re.findall(r"^stat::(\w+):\s+(\d+)$", log, re.M)}
    cov = re.findall(r"cov: (\d+)", log)
    found = sorted(set(artifacts(target)) - before)
    summary = {
        "seconds": seconds,
        "executions": stats.get("number_of_executed_units", 0),
        "executions_per_s": stats.get("average_exec_per_sec", 0),
        "peak_rss_mb": stats.get("peak_rss_mb", 0),
        "coverage": int(cov[-1]) if cov else 0,
        "new_findings": found,
        "exit": done.returncode,
    }
    if done.returncode != 0 and not found:
        summary["log_tail"] = log[-4000:]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=300, help="fuzzing time per target")
    parser.add_argument("--targets", default="sql_check,xlsx", help=f"comma-separated, of {','.join(TARGETS)}")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        sys.exit(f"unknown targets: {unknown}")
    subprocess.run([sys.executable, str(FUZZ / "seeds.py")], check=True)
    build = subprocess.run(["cargo", "+nightly", "fuzz", "build", "-s", "none", "-a"], cwd=ROOT)
    if build.returncode != 0:
        sys.exit("cargo +nightly fuzz build failed (is cargo-fuzz installed?)")
    results = {}
    for target in targets:
        r = run(target, args.seconds)
        results[target] = r
        print(f"{target}: {r['executions']} executions in {r['seconds']} s ({r['executions_per_s']}/s), "
              f"coverage {r['coverage']}, peak RSS {r['peak_rss_mb']} MB, "
              f"new findings: {r['new_findings'] or 'none'}", flush=True)
        if "log_tail" in r:
            print(r["log_tail"])
    results["machine"] = harness.machine_info()
    print("results:", harness.write_results("fuzz", results))


if __name__ == "__main__":
    main()
