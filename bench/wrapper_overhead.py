"""Measure the wrapper's overhead over the bare command.

Runs a `true` job N times through ``wrapper/job_wrapper.sh`` (each with its own id and a row in
a real ``server.db``) and N times bare, alternating, under each shell asked for, and prints the
median, p90 and the median overhead in milliseconds.

    python bench/wrapper_overhead.py [--runs 200] [--shell dash --shell bash ...]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "wrapper" / "job_wrapper.sh"
SCHEMA = ROOT / "wrapper" / "server_schema.sql"


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000.0


def bench_shell(shell: list[str], runs: int) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory(prefix="jobkit-bench-") as base:
        db = sqlite3.connect(Path(base) / "server.db")
        db.executescript(SCHEMA.read_text())
        db.executemany("INSERT INTO jobs (id) VALUES (?)", [(f"bench-{i}",) for i in range(runs)])
        db.commit()
        db.close()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": base, "USER": "bench",
               "JOBKIT_BASE_DIR": base}
        true = shutil.which("true") or "/bin/true"
        wrapped: list[float] = []
        bare: list[float] = []
        for i in range(runs):
            wrapped.append(timed([*shell, str(WRAPPER), f"bench-{i}", true], env))
            bare.append(timed([true], env))
        status = Path(base, "jobs", f"bench-{runs - 1}.status").read_text()
        if '"status":"completed"' not in status or '"db":"ok"' not in status:
            raise SystemExit(f"the benchmarked wrapper did not record a clean run: {status}")
    wm, bm = statistics.median(wrapped), statistics.median(bare)
    p90 = statistics.quantiles(wrapped, n=10)[-1]
    return wm, p90, bm, wm - bm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--shell", action="append", help="shell command, e.g. dash or 'busybox sh'")
    args = ap.parse_args()
    shells = args.shell or ["dash", "bash", "busybox sh", "mksh"]
    print(f"wrapper overhead, {args.runs} runs of a `true` job per shell (ms)")
    print(f"{'shell':<12} {'median':>8} {'p90':>8} {'bare':>8} {'overhead':>9}")
    for name in shells:
        argv = name.split()
        if shutil.which(argv[0]) is None:
            print(f"{name:<12} not installed")
            continue
        wm, p90, bm, over = bench_shell(argv, args.runs)
        print(f"{name:<12} {wm:8.1f} {p90:8.1f} {bm:8.1f} {over:9.1f}")


if __name__ == "__main__":
    main()
