"""Reconcile N jobs on one lab host: the batched probe (one round trip) against a per-job chain
like the original (server DB, then state file, then tmux, one SSH command each, stopping at the
first source that answers), over the same pinned, reused SSH connection.

    python bench/reconcile.py [--target debian-bookworm] [--sizes 1,10,100,1000] [--mix]

Jobs are seeded directly on the host (rows + state files of finished jobs, written by the real
wrapper for the first one and copied for the rest) so that 1,000 jobs do not need 1,000 runs.
``--mix`` deletes the state file and the row of every third job, so the per-job chain needs its
second and third commands for those.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from jobkit.lab import Lab
from jobkit.probe import JobQuery, probe
from jobkit.transport_ssh import SSHTransport

B = '"$HOME/.jobkit"'


async def seed(t: SSHTransport, n: int, prefix: str, mix: bool) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(n)]
    script = (
        f"b={B}; sqlite3 \"$b/server.db\" \"INSERT INTO jobs (id) VALUES ('{ids[0]}')\" && "
        f"\"$b/bin/job_wrapper.sh\" {ids[0]} true >/dev/null && "
        f"i=1; while [ $i -lt {n} ]; do id={prefix}-$i; "
        f"sed \"s/{ids[0]}/$id/\" \"$b/jobs/{ids[0]}.status\" >\"$b/jobs/$id.status\"; i=$((i + 1)); done; "
        f"i=1; {{ echo 'BEGIN;'; while [ $i -lt {n} ]; do echo \"INSERT INTO jobs (id, status, exit_code) "
        f"VALUES ('{prefix}-$i', 'completed', 0);\"; i=$((i + 1)); done; echo 'COMMIT;'; }} | sqlite3 \"$b/server.db\""
    )
    await t.run(script, timeout=120, check=True)
    if mix:
        gone = ids[1::3]
        await t.run(f"b={B}; for id in {' '.join(gone)}; do rm -f \"$b/jobs/$id.status\"; done; "
                    f"sqlite3 \"$b/server.db\" \"DELETE FROM jobs WHERE id IN ({','.join(repr(i) for i in gone)})\"",
                    timeout=60, check=True)
    return ids


async def per_job_chain(t: SSHTransport, ids: list[str]) -> int:
    commands = 0
    for job in ids:  # the original: one source at a time, one SSH command each
        r = await t.run(f"sqlite3 {B}/server.db \"SELECT status, exit_code FROM jobs WHERE id = '{job}'\"")
        commands += 1
        if r.exit_status == 0 and r.stdout.strip():
            continue
        r = await t.run(f"cat {B}/jobs/{job}.status")
        commands += 1
        if r.exit_status == 0 and r.stdout.strip():
            continue
        await t.run(f"tmux -S {B}/tmux.sock has-session -t ={job}")
        commands += 1
    return commands


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="debian-bookworm")
    ap.add_argument("--sizes", default="1,10,100,1000")
    ap.add_argument("--mix", action="store_true")
    args = ap.parse_args()
    with Lab() as lab:
        host = lab.start(args.target, fresh=True)
        t = SSHTransport(host.spec)
        await t.run("true")  # connection established before timing
        print(f"target {args.target}{' (mixed: every third job has no row and no state file)' if args.mix else ''}")
        print(f"{'jobs':>6} {'batched':>10} {'per-job chain':>15} {'ssh cmds':>9} {'ratio':>8}")
        for n in (int(x) for x in args.sizes.split(",")):
            ids = await seed(t, n, f"b{n}", args.mix)
            start = time.monotonic()
            result = await probe(t, [JobQuery(i) for i in ids], timeout=30)
            batched = time.monotonic() - start
            if not result.host.reachable or len(result.evidence) != n:
                raise SystemExit(f"probe failed: {result.host.error}")
            start = time.monotonic()
            commands = await per_job_chain(t, ids)
            chain = time.monotonic() - start
            print(f"{n:>6} {batched * 1000:>8.0f}ms {chain * 1000:>13.0f}ms {commands:>9} {chain / batched:>7.1f}x")
        await t.close()


if __name__ == "__main__":
    asyncio.run(main())
