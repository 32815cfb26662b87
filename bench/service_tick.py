"""One tick of the reconciliation service over many lab hosts with many running jobs each.

    python bench/service_tick.py [--hosts 20] [--jobs 500] [--target debian-bookworm]
                                 [--concurrency 4] [--ticks 5]

Starts ``--hosts`` lab containers of their own, and on each seeds ``--jobs`` running jobs: one
real wrapper runs a long job, and its server row and running state file are copied for the rest
(same pid and start time: every job is alive for the probe), so 10,000 jobs do not need 10,000
processes. The local store gets the same jobs as ``running``. Then the service ticks: the first
tick also opens one SSH connection per host; the next ones are the steady state a long-running
``jobkit watch`` sees (every job probed, merged, compared field by field and written back as of
the tick's start). Prints each tick's time and counts, and the median of the steady ticks.
Everything it started is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from jobkit.lab import Lab, LabHost
from jobkit.models import JobStatus, Source, Verdict
from jobkit.reconcile import ReconcileService
from jobkit.store import AsyncStore, Store, Update
from jobkit.transport_ssh import SSHTransport

B = '"$HOME/.jobkit"'


async def seed(t: SSHTransport, n: int, prefix: str) -> None:
    """``n`` running jobs on the host: a real wrapper's running record, copied."""
    first = f"{prefix}-0"
    await t.run(f"b={B}; sqlite3 \"$b/server.db\" \"INSERT INTO jobs (id) VALUES ('{first}')\" && "
                f"(JOBKIT_BASE_DIR=\"$b\" setsid \"$b/bin/job_wrapper.sh\" {first} sleep 100000 "
                ">/dev/null 2>&1 </dev/null &)", timeout=30, check=True)
    deadline = time.monotonic() + 30
    while '"running"' not in (await t.run(f"cat {B}/jobs/{first}.status 2>/dev/null")).stdout:
        if time.monotonic() > deadline:
            raise SystemExit(f"{t.host_name}: the seed job did not start")
        await asyncio.sleep(0.05)
    await t.run(
        f"b={B}; i=1; while [ $i -lt {n} ]; do id={prefix}-$i; "
        f"sed \"s/{first}/$id/\" \"$b/jobs/{first}.status\" >\"$b/jobs/$id.status\"; i=$((i + 1)); done; "
        f"i=1; {{ echo 'BEGIN;'; while [ $i -lt {n} ]; do echo \"INSERT INTO jobs (id, status, started_at) "
        f"SELECT '{prefix}-'||$i, status, started_at FROM jobs WHERE id = '{first}';\"; i=$((i + 1)); done; "
        "echo 'COMMIT;'; } | sqlite3 \"$b/server.db\"", timeout=300, check=True)


def record_running(store: Store, host: str, n: int, prefix: str) -> None:
    for i in range(n):
        store.add_job(f"{prefix}-{i}", host, ["sleep", "100000"])
    updates = [Update(Verdict(r.id, JobStatus.RUNNING, Source.STATE_FILE, "seeded", alive=True), r.version,
                      {}, time.time()) for r in store.jobs(host)]
    store.apply(updates)


async def bench(hosts: list[LabHost], args: argparse.Namespace, store: AsyncStore) -> None:
    transports = {}
    for i, h in enumerate(hosts):
        name = f"h{i}"
        transports[name] = SSHTransport(replace(h.spec, name=name))
        store.sync.add_host(replace(h.spec, name=name))
    print(f"seeding {args.jobs} running jobs on each of {len(hosts)} hosts ...", file=sys.stderr)
    await asyncio.gather(*(seed(t, args.jobs, f"{name}j") for name, t in transports.items()))
    for name in transports:
        record_running(store.sync, name, args.jobs, f"{name}j")
    await asyncio.gather(*(t.close() for t in transports.values()))  # the service opens its own
    transports.clear()

    def transport_for(name: str) -> SSHTransport:
        if name not in transports:
            transports[name] = SSHTransport(store.sync.host(name))
        return transports[name]

    service = ReconcileService(store, transport_for, concurrency=args.concurrency, timeout=10.0, grace=600.0)
    load = os.getloadavg()
    print(f"{len(hosts)} hosts x {args.jobs} jobs ({len(hosts) * args.jobs} running), target {args.target}, "
          f"concurrency {args.concurrency}; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'tick':>4} {'seconds':>8} {'reconciled':>10} {'changed':>8} {'drifts':>7} {'unavailable':>11}  note")
    steady = []
    for k in range(args.ticks):
        tick = await service.tick()
        assert tick is not None
        note = "connects to every host" if k == 0 else "steady state"
        print(f"{k + 1:>4} {tick.seconds:>8.3f} {tick.reconciled:>10} {tick.changed:>8} {len(tick.drifts):>7} "
              f"{len(tick.hosts_unavailable):>11}  {note}")
        if tick.hosts_unavailable or tick.hosts_failed or tick.reconciled != len(hosts) * args.jobs:
            raise SystemExit(f"the tick did not reconcile every job: {tick.as_dict()}")
        if k:
            steady.append(tick.seconds)
    if steady:
        print(f"median steady tick: {statistics.median(steady):.3f} s (peak concurrent probes {service.peak})")
    await asyncio.gather(*(t.close() for t in transports.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--target", default="debian-bookworm")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--ticks", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobkit-bench-") as tmp, Lab() as lab:
        print(f"starting {args.hosts} {args.target} containers ...", file=sys.stderr)
        hosts = [lab.start(args.target, fresh=True) for _ in range(args.hosts)]
        store = AsyncStore(Store(Path(tmp) / "store.db"))
        try:
            asyncio.run(bench(hosts, args, store))
        finally:
            store.sync.close()


if __name__ == "__main__":
    main()
