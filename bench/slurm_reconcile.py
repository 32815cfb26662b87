"""SLURM: the evidence for N jobs in one round trip against a per-job chain, and batched submits.

    python bench/slurm_reconcile.py [--sizes 1,100,1000] [--batch 250]

Starts the lab's ``slurm`` cluster, submits max(sizes) short jobs (``true``) in batches of
``--batch`` launches per SSH round trip (:meth:`SlurmBackend.launch_many`) and prints the
submits per second; then, for each size N, times the backend's probe of N jobs (ONE command:
``squeue -t all``, ``sacct -P -X``, the state files) against the per-job chain (``squeue -j
ID``, then ``sacct -j ID``, then the state file: three SSH commands per job, over the same
connection) and prints both times and the ratio. The cluster is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time

from jobkit.backends.base import LaunchRequest, LaunchState
from jobkit.backends.slurm import SlurmBackend
from jobkit.lab import Lab
from jobkit.probe import JobQuery
from jobkit.transport_ssh import SSHTransport


async def chain(t: SSHTransport, sid: str, job_id: str) -> None:
    """The per-job chain, one SSH command per step."""
    await t.run(f"squeue -h -t all -j {sid} -o '%i|%T|%r|%j'", timeout=30)
    await t.run(f"sacct -n -P -X -j {sid} -o JobID,State,ExitCode,JobName", timeout=30)
    await t.run(f"cat ~/.jobkit/jobs/{job_id}.status 2>/dev/null", timeout=30)


async def main(sizes: list[int], batch: int) -> None:
    n = max(sizes)
    with Lab() as lab:
        host = lab.start("slurm")
        print(f"cluster ready in {host.ready_seconds:.1f}s", flush=True)
        t = SSHTransport(host.spec)
        backend = SlurmBackend()
        try:
            tag = secrets.token_hex(3)
            reqs = [LaunchRequest(f"b{tag}-{i}", ["true"], token=secrets.token_hex(8)) for i in range(n)]
            start = time.monotonic()
            outcomes = []
            for i in range(0, n, batch):
                outcomes += await backend.launch_many(t, reqs[i:i + batch], timeout=600)
            secs = time.monotonic() - start
            ok = [o for o in outcomes if o.state is LaunchState.LAUNCHED]
            print(f"submitted {len(ok)}/{n} jobs in {secs:.1f}s ({len(ok) / secs:.1f} submits/s; "
                  f"{-(-n // batch)} round trips of up to {batch})", flush=True)
            sids = {r.job_id: o.scheduler_id or "" for r, o in zip(reqs, outcomes, strict=True)}
            print(f"{'jobs':>6} {'one round trip':>15} {'per-job chain':>14} {'ratio':>7}")
            for size in sizes:
                qs = [JobQuery(r.job_id, scheduler_id=sids[r.job_id]) for r in reqs[:size]]
                start = time.monotonic()
                result = await backend.probe(t, qs, None, timeout=120)
                one = time.monotonic() - start
                assert result.host.reachable, result.host
                assert len(result.evidence) == size
                start = time.monotonic()
                for r in reqs[:size]:
                    await chain(t, sids[r.job_id], r.job_id)
                per = time.monotonic() - start
                print(f"{size:>6} {one:>14.3f}s {per:>13.2f}s {per / one:>6.0f}x", flush=True)
        finally:
            await t.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,100,1000")
    ap.add_argument("--batch", type=int, default=250)
    a = ap.parse_args()
    try:
        sizes = sorted({int(x) for x in a.sizes.split(",")})
    except ValueError:
        print("slurm_reconcile: error: --sizes: comma-separated whole numbers", file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(sizes, a.batch))
