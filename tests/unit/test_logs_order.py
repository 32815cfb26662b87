"""The order of what one output read looks at on the host (`jobkit.logs`): a job that starts,
writes and ends while the read is in progress is never taken for one whose wrapper "ended before
starting it".

The host's side is made deterministic: the first `sed` the read's script runs (a PATH shim) plays
the wrapper's whole life at once (output file, final state file, wrapper gone), so the read sees
the host before the job at some steps and after it at the others. Read in the wrong order
(files first, liveness last) that gives "no output file, no state file, wrapper gone"."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from jobkit.logs import output_state, read_output
from jobkit.transport_local import LocalTransport

pytestmark = pytest.mark.unit

JOB = "quick-1"


def _start_time(pid: int) -> str:
    line = Path(f"/proc/{pid}/stat").read_text()
    return line.rsplit(") ", 1)[1].split()[19]


async def _collect(t: LocalTransport, base: Path) -> bytes:
    got = b""
    async for chunk in read_output(t, JOB, base_dir=str(base), follow=True, poll=0.05, timeout=10):
        got += chunk
    return got


@pytest.mark.parametrize("use", ["state", "follow"])
async def test_a_job_that_runs_its_whole_life_during_one_read_is_seen_with_its_output(
        tmp_path: Path, use: str) -> None:
    base, shim = tmp_path / "base", tmp_path / "shim"
    jobs = base / "jobs"
    jobs.mkdir(parents=True)
    shim.mkdir()
    real_sed = shutil.which("sed")
    assert real_sed is not None
    wrapper = await asyncio.create_subprocess_exec("sleep", "60")  # the wrapper, claimed and alive
    try:
        (jobs / f"{JOB}.wrapper.log").write_text(
            f"jobkit-wrapper[{wrapper.pid}] {JOB}: claimed (start {_start_time(wrapper.pid)})\n")
        state = json.dumps({"version": 1, "id": JOB, "status": "completed", "exit_code": 0, "signal": None,
                            "wrapper_pid": wrapper.pid, "wrapper_start": int(_start_time(wrapper.pid))})
        sed = shim / "sed"
        sed.write_text(f"""#!/bin/sh
if mkdir '{tmp_path}/played' 2>/dev/null; then
  printf 'hello\\n' >'{jobs}/{JOB}.out'; : >'{jobs}/{JOB}.err'
  printf '%s\\n' '{state}' >'{jobs}/{JOB}.status'
  kill -KILL {wrapper.pid}
  while :; do
    l=; read -r l </proc/{wrapper.pid}/stat 2>/dev/null || break
    case ${{l##*') '}} in Z*) break ;; esac
  done
fi
exec '{real_sed}' "$@"
""")
        sed.chmod(sed.stat().st_mode | stat.S_IXUSR)
        t = LocalTransport(env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"})
        if use == "state":
            seen = await output_state(t, JOB, base_dir=str(base))
            assert (seen.size, seen.status, seen.wrapper_alive) == (6, "completed", False)
        else:
            assert await asyncio.wait_for(_collect(t, base), 20) == b"hello\n"
        assert (tmp_path / "played").is_dir()  # the job's life did happen inside the read
    finally:
        if wrapper.returncode is None:
            wrapper.kill()
        await wrapper.wait()
