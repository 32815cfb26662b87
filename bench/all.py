"""Every benchmark in one run, one table: what, now, target, ratio.

    python bench/all.py [--quick] [--target debian-bullseye] [--service] [--lab-times]

Each row measures its two sides side by side in the same run (interleaved repetitions, medians),
so that the ratio holds on a loaded machine even when the absolute numbers move. The load
average is printed before and after, and beside every row.

- reconcile, 1 job: the batched probe (one round trip) against one ``sqlite3`` SSH command on
  the same reused connection (target: batched <= 1.5x the single command).
- reconcile, 1,000 jobs on one host: the batched probe against the per-job chain of
  ``bench/reconcile.py`` (target: <= 120 ms and >= 80x). ``--quick`` times the chain on 200 of
  the jobs and scales it to 1,000 (said in the table).
- wrapper overhead, a ``true`` job under dash: ``bench/wrapper_overhead.py``'s measure (target:
  <= 15 ms median).
- ``--against REF``: the same rows for the probe and the wrapper of git revision ``REF`` too,
  interleaved with the current ones in the same run ("was ..." in the table): before/after
  ratios that hold on a loaded machine.
- the conformance suite's default run (``jobkit conformance`` on ``local`` and every offline lab
  target, as ``scripts/run-main.sh`` runs it; target: <= 60 s on 2 cores), its wall time and the
  count of each outcome, so that a change of verdict shows beside the time (``--no-conformance``
  leaves it out; ``--quick`` too unless ``--conformance``).
- ``--service``: one steady tick of the reconciliation service (``bench/service_tick.py``) on
  2 hosts x 500 running jobs (no target). ``--lab-times``: the target's start-to-SSH-ready.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from jobkit.lab import Lab
from jobkit.probe import JobQuery, parse, probe
from jobkit.remote import base_dir_word
from jobkit.transport_ssh import SSHTransport

HERE = Path(__file__).resolve().parent


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


Row = tuple[str, str, str, str, str]  # what, now, target, ratio, load


async def _timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return (time.perf_counter() - start) * 1000.0


def at_revision(ref: str, path: str) -> str:
    r = subprocess.run(["git", "-C", str(HERE.parent), "show", f"{ref}:{path}"], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise SystemExit(f"jobkit: error: cannot read {path} at {ref}: {r.stderr.strip()}")
    return r.stdout


async def _probe_with(t: SSHTransport, script: str, queries: list[JobQuery]) -> None:
    """The probe script of another revision, asked as that revision's client asked it."""
    stdin = "".join(f"{q.job_id} {q.pid or '-'} {q.proc_start or '-'} {'F' if q.fence else '-'}\n" for q in queries)
    r = await t.run(f"sh -c {shlex.quote(script)} probe {base_dir_word(None)}", stdin=stdin, timeout=60)
    if len(parse(r.stdout, queries).evidence) != len(queries):
        raise SystemExit("the reference probe failed")


def _was(times: list[float]) -> str:
    return f" (was {statistics.median(times):.1f} ms)" if times else ""


async def reconcile_rows(target: str, quick: bool, ref_probe: str | None = None) -> list[Row]:
    rec = _module("reconcile")
    rows: list[Row] = []
    with Lab() as lab:
        host = lab.start(target, fresh=True)
        t = SSHTransport(host.spec)
        try:
            await t.run("true")  # the connection is made before anything is timed
            # 1 job: batched probe vs one sqlite3 command, interleaved
            one = await rec.seed(t, 1, "one", False)

            async def batched_one() -> None:
                r = await probe(t, [JobQuery(one[0])], timeout=30)
                if not r.host.reachable or r.evidence[one[0]].db.state != "ok":  # type: ignore[union-attr]
                    raise SystemExit(f"probe failed: {r.host.error}")

            async def single() -> None:
                await rec.per_job_chain(t, one)

            reps = 15 if quick else 41
            b1: list[float] = []
            s1: list[float] = []
            r1: list[float] = []
            for _ in range(reps):
                b1.append(await _timed(batched_one))
                s1.append(await _timed(single))
                if ref_probe is not None:
                    r1.append(await _timed(lambda: _probe_with(t, ref_probe, [JobQuery(one[0])])))
            bm, sm = statistics.median(b1), statistics.median(s1)
            was = f" (was {statistics.median(r1) / sm:.2f}x)" if r1 else ""
            rows.append((f"reconcile 1 job, {target} (batched vs one sqlite3 SSH command)",
                         f"{bm:.1f} ms vs {sm:.1f} ms{_was(r1)}", "<= 1.5x", f"{bm / sm:.2f}x{was}", load()))
            # 1,000 jobs: batched probe vs the per-job chain
            n = 1000
            ids = await rec.seed(t, n, "k", False)

            async def batched_n() -> None:
                r = await probe(t, [JobQuery(i) for i in ids], timeout=60)
                if not r.host.reachable or len(r.evidence) != n:
                    raise SystemExit(f"probe failed: {r.host.error}")

            await batched_n()  # warm: the host's page cache holds the 2,000 files
            sample = ids[:200] if quick else ids
            bn: list[float] = []
            rn: list[float] = []
            chain: list[float] = []
            for _ in range(2 if quick else 3):
                for _ in range(3):
                    bn.append(await _timed(batched_n))
                    if ref_probe is not None:
                        rn.append(await _timed(lambda: _probe_with(t, ref_probe, [JobQuery(i) for i in ids])))
                start = time.perf_counter()
                await rec.per_job_chain(t, sample)
                chain.append((time.perf_counter() - start) * 1000.0 * n / len(sample))
                bn.append(await _timed(batched_n))
            bm, cm = statistics.median(bn), statistics.median(chain)
            scaled = f" (chain timed on {len(sample)}, scaled)" if len(sample) != n else ""
            was = f" (was {cm / statistics.median(rn):.0f}x)" if rn else ""
            rows.append((f"reconcile 1000 jobs, {target}{scaled}", f"{bm:.0f} ms{_was(rn)}, chain {cm:.0f} ms",
                         "<= 120 ms, >= 80x", f"{cm / bm:.0f}x{was}", load()))
        finally:
            await t.close()
    return rows


def wrapper_row(quick: bool, ref_wrapper: str | None = None) -> Row:
    """Runs of a `true` job through the wrapper (and through ``ref_wrapper``), alternating with
    bare runs, in one server.db; medians."""
    wo = _module("wrapper_overhead")
    runs = 40 if quick else 200
    with tempfile.TemporaryDirectory(prefix="jobkit-bench-") as base:
        import sqlite3
        db = sqlite3.connect(Path(base) / "server.db")
        db.executescript(wo.SCHEMA.read_text())
        db.executemany("INSERT INTO jobs (id) VALUES (?)", [(f"{k}-{i}",) for k in "nr" for i in range(runs)])
        db.commit()
        db.close()
        ref = Path(base) / "ref_wrapper.sh"
        if ref_wrapper is not None:
            ref.write_text(ref_wrapper)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": base, "USER": "bench", "JOBKIT_BASE_DIR": base}
        new: list[float] = []
        old: list[float] = []
        bare: list[float] = []
        for i in range(runs):
            new.append(wo.timed(["dash", str(wo.WRAPPER), f"n-{i}", "/bin/true"], env))
            if ref_wrapper is not None:
                old.append(wo.timed(["dash", str(ref), f"r-{i}", "/bin/true"], env))
            bare.append(wo.timed(["/bin/true"], env))
        status = Path(base, "jobs", f"n-{runs - 1}.status").read_text()
        if '"status":"completed"' not in status or '"db":"ok"' not in status:
            raise SystemExit(f"the benchmarked wrapper did not record a clean run: {status}")
    bm = statistics.median(bare)
    over = statistics.median(new) - bm
    p90 = statistics.quantiles(new, n=10)[-1]
    was = f" (was {statistics.median(old) - bm:.1f} ms)" if old else ""
    return ("wrapper overhead, `true` job, dash (median, wrapped minus bare)",
            f"{over:.1f} ms{was} (wrapped {statistics.median(new):.1f}, p90 {p90:.1f}, bare {bm:.1f})", "<= 15 ms",
            f"{over / 15:.2f}x of target", load())


def conformance_row() -> Row:
    """The main job, timed: ``jobkit conformance`` with its defaults, in a process of its own;
    the outcomes counted from its JSON report."""
    import json
    from collections import Counter
    with tempfile.TemporaryDirectory(prefix="jobkit-bench-cf-") as reports:
        start = time.monotonic()
        jobkit = Path(sys.executable).with_name("jobkit")  # this environment's own command
        r = subprocess.run([str(jobkit), "conformance", "--report-dir", reports],
                           capture_output=True, text=True, check=False)
        wall = time.monotonic() - start
        try:
            results = json.loads(Path(reports, "conformance.json").read_text())["results"]
        except (OSError, ValueError, KeyError) as exc:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            return ("conformance default run", f"failed (exit {r.returncode}): {tail} ({exc})", "<= 60 s", "-",
                    load())
    outcomes = Counter(str(x["outcome"]) for x in results)
    targets = len({x["target"] for x in results})
    said = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
    return (f"conformance default run, {targets} targets (exit {r.returncode})", f"{wall:.0f} s ({said})",
            "<= 60 s", f"{wall / 60:.2f}x of target", load())


def service_row(target: str) -> Row:
    # the service benchmark runs as its own process: its own lab, its own loop
    r = subprocess.run([sys.executable, str(HERE / "service_tick.py"), "--hosts", "2", "--jobs", "500",
                        "--target", target, "--ticks", "4"], capture_output=True, text=True, check=False)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("median steady tick")), None)
    if line is None:
        return ("service tick, 2 hosts x 500 jobs", "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1],
                "-", "-", load())
    return ("service tick, 2 hosts x 500 jobs (steady, median)", line.split(":", 1)[1].split("(")[0].strip(),
            "-", "-", load())


def lab_row(target: str, quick: bool) -> Row:
    ready = []
    for _ in range(1 if quick else 3):
        with Lab() as lab:
            start = time.monotonic()
            lab.start(target, fresh=True)
            ready.append(time.monotonic() - start)
    return (f"lab start-to-ready, {target}", f"{statistics.median(ready):.2f} s", "-", "-", load())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about a minute)")
    ap.add_argument("--target", action="append", help="lab target(s) for the reconcile rows "
                    "(default: debian-bullseye)")
    ap.add_argument("--against", metavar="REF", help="also the probe and wrapper of git revision REF, "
                    "interleaved (e.g. main)")
    ap.add_argument("--conformance", action=argparse.BooleanOptionalAction, default=None,
                    help="time the conformance suite's default run (default: in the full run, not with --quick)")
    ap.add_argument("--service", action="store_true", help="also one service tick over 2 lab hosts")
    ap.add_argument("--lab-times", action="store_true", help="also the lab's start-to-ready time")
    args = ap.parse_args()
    targets = args.target or ["debian-bullseye"]
    before = load()
    rows: list[Row] = []
    ref_probe = at_revision(args.against, "jobkit/data/probe.sh") if args.against else None
    ref_wrapper = at_revision(args.against, "wrapper/job_wrapper.sh") if args.against else None
    for target in targets:
        rows += asyncio.run(reconcile_rows(target, args.quick, ref_probe))
    rows.append(wrapper_row(args.quick, ref_wrapper))
    if args.conformance or (args.conformance is None and not args.quick):
        rows.append(conformance_row())
    if args.service:
        rows.append(service_row(targets[0]))
    if args.lab_times:
        rows.append(lab_row(targets[0], args.quick))
    against = f", against {args.against}" if args.against else ""
    print(f"jobkit benchmarks ({'quick' if args.quick else 'full'}{against}), {os.cpu_count()} cores; "
          f"load average before: {before}, after: {load()}")
    widths = [max(len(r[i]) for r in [("what", "now", "target", "ratio", "load"), *rows]) for i in range(5)]
    header = ("what", "now", "target", "ratio", "load")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
