"""The wrapper end to end over SSH on one host: the scenarios every lab target must pass."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jobkit.transport import Transport

B = '"$HOME/.jobkit"'


async def _state(t: Transport, job: str) -> dict[str, Any] | None:
    r = await t.run(f'cat {B}/jobs/{job}.status 2>/dev/null')
    return json.loads(r.stdout) if r.stdout.strip() else None


async def _row(t: Transport, job: str) -> str:
    r = await t.run(f"sqlite3 {B}/server.db \"SELECT status || '|' || exit_code || '|' || "
                    f"coalesce(signal, '') FROM jobs WHERE id = '{job}'\"", check=True)
    return r.stdout.strip()


async def _wait(t: Transport, job: str, status: str, seconds: float = 15) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        st = await _state(t, job)
        if st and st["status"] == status:
            return st
        await asyncio.sleep(0.1)
    raise AssertionError(f"{job} never reached {status}: {await _state(t, job)}")


async def wrapper_end_to_end(t: Transport, prefix: str) -> None:
    """exit 0 → completed; exit 3 → failed 3; SIGTERM to the wrapper → failed 143 TERM."""
    for job, cmd, rc in ((f"{prefix}-ok", "true", 0), (f"{prefix}-three", "sh -c 'exit 3'", 3)):
        r = await t.run(f"sqlite3 {B}/server.db \"INSERT INTO jobs (id) VALUES ('{job}')\" && "
                        f"{B}/bin/job_wrapper.sh {job} {cmd}", timeout=15)
        assert r.exit_status == rc, r
        st = await _state(t, job)
        assert st is not None
        assert (st["status"], st["exit_code"], st["db"]) == ("completed" if rc == 0 else "failed", rc, "ok")
        assert await _row(t, job) == f"{'completed' if rc == 0 else 'failed'}|{rc}|"
    job = f"{prefix}-term"
    r = await t.run(f"sqlite3 {B}/server.db \"INSERT INTO jobs (id) VALUES ('{job}')\" && "
                    f"JOBKIT_KILL_GRACE=2 {B}/bin/job_wrapper.sh {job} sleep 60 "
                    f">/dev/null 2>&1 </dev/null & echo $!", check=True)
    wrapper_pid = int(r.stdout.strip())
    running = await _wait(t, job, "running")
    assert running["wrapper_pid"] == wrapper_pid
    await t.run(f"kill -s TERM {wrapper_pid}", check=True)
    st = await _wait(t, job, "failed")
    assert (st["exit_code"], st["signal"]) == (143, "TERM")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await _row(t, job) != "failed|143|TERM":
        assert loop.time() < deadline, await _row(t, job)
        await asyncio.sleep(0.1)
    gone = await t.run(f"kill -0 {running['pid']} 2>/dev/null && echo alive || echo gone")
    assert gone.stdout.strip() == "gone"
