"""A runner killed (SIGKILL) at every boundary of a submit's saga in turn, and at every boundary of
the walk-back of a submit whose start failed: the next start leaves either a complete job or
nothing — no server row without a local row, no tmux session without a row, no orphan state file
— and a third start changes nothing (saga log, local store, host row, session, state file)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from jobkit.lab import LabHost
from jobkit.runner import SUBMIT_STEPS, recover
from jobkit.sagas import SagaState
from jobkit.store import AsyncStore, Store
from jobkit.transport_ssh import SSHTransport
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.slow
B = '"$HOME/.jobkit"'
ROOT = Path(__file__).resolve().parents[2]
POINTS = ["saga-begun", *[f"{w}:{s}" for s in SUBMIT_STEPS for w in ("before", "begun", "acted", "after")],
          "saga-end", None]
STARTED_POINTS = {"acted:start", "after:start", "saga-end", None}  # the session was started
#: the walk-back of a submit whose start step failed (never sent): start itself is failed, the
#: steps before it are undone newest first
WALK_BACK_POINTS = ["compensating", *[f"{w}:{s}" for s in ("register", "prepare", "record_local")
                                      for w in ("undone", "compensated")], None]


async def host_side(t: SSHTransport, job: str) -> dict[str, object]:
    r = await t.run(f"b={B}; id={job}; echo row=$(sqlite3 -cmd '.timeout 5000' \"$b/server.db\" "
                    "\"SELECT status || ':' || coalesce(token, '') FROM jobs WHERE id = '$id'\"); "
                    "tmux -S \"$b/tmux.sock\" has-session -t \"=$id\" 2>/dev/null && echo session=yes; "
                    "[ -e \"$b/jobs/$id.status\" ] && echo state=yes; "
                    "c=; { read -r c <\"$b/jobs/$id.wrapper.log\"; } 2>/dev/null; echo \"claim=$c\"", check=True)
    facts = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return {"row": facts.get("row", ""), "session": facts.get("session") == "yes",
            "state": facts.get("state") == "yes", "claim": facts.get("claim", "")}


@pytest.mark.parametrize("point", POINTS, ids=[p or "no-crash" for p in POINTS])
async def test_a_runner_killed_mid_submit_leaves_a_complete_job_or_nothing(
        host: LabHost, tmp_path: Path, transport: SSHTransport, point: str | None) -> None:
    db = tmp_path / "store.db"
    store = AsyncStore(Store(db))
    store.sync.add_host(host.spec)
    job = f"crash-{uuid.uuid4().hex[:8]}"
    child = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "tests.runtime.submit_child", str(db), host.target, job, point or "-"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    if point is None:
        assert child.returncode == 0, child.stderr
    else:
        assert child.returncode == -9, (child.returncode, child.stderr)  # really killed there
    # the next start of a runner
    second = await recover(store, lambda _h: transport, grace=0)
    assert second.failed == [], second
    sagas = store.sync.sagas.sagas(name="submit")
    assert len(sagas) == 1  # the saga is begun before anything else
    assert sagas[0].state in (SagaState.COMPLETED, SagaState.COMPENSATED), sagas[0]
    local = next((j for j in store.sync.jobs() if j.id == job), None)
    if point in STARTED_POINTS:
        # a complete job: local row, server row of its token, and it ran
        assert local is not None
        assert sagas[0].state is SagaState.COMPLETED
        await wait_until(lambda: _state_final(transport, job))
        side = await host_side(transport, job)
        assert side["row"] == f"completed:{local.token}", side
        assert str(side["claim"]).startswith("jobkit-wrapper["), side
    else:
        # nothing: no server row, no session, no state file (a fence claim may remain: it keeps
        # a launch still in flight from ever starting the job); locally, at most a failed record
        side = await host_side(transport, job)
        assert side["row"] == "", side
        assert not side["session"], side
        assert not side["state"], side
        assert local is None or (local.status.value, local.exit_code) == ("failed", None), local
        if local is not None:
            assert "never started" in (local.reason or ""), local.reason
    await _third_start_changes_nothing(store, transport, job)
    store.sync.close()


@pytest.mark.parametrize("point", WALK_BACK_POINTS, ids=[p or "no-crash" for p in WALK_BACK_POINTS])
async def test_a_runner_killed_while_walking_a_submit_back_leaves_nothing(
        host: LabHost, tmp_path: Path, transport: SSHTransport, point: str | None) -> None:
    db = tmp_path / "store.db"
    store = AsyncStore(Store(db))
    store.sync.add_host(host.spec)
    job = f"undo-{uuid.uuid4().hex[:8]}"
    child = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "tests.runtime.submit_child", str(db), host.target, job, point or "-",
                         "fail-start"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    if point is None:
        assert child.returncode == 1, child.stderr
        assert "LaunchFailed" in child.stderr, child.stderr
    else:
        assert child.returncode == -9, (child.returncode, child.stderr)  # really killed there
        left = store.sync.sagas.sagas(name="submit")[0]
        assert left.state is SagaState.COMPENSATING, left  # the walk-back had begun
    # the next start of a runner finishes the walk-back
    second = await recover(store, lambda _h: transport, grace=0)
    assert second.failed == [], second
    (saga,) = store.sync.sagas.sagas(name="submit")
    assert saga.state is SagaState.COMPENSATED, saga
    assert [s.state.value for s in saga.steps] == ["compensated"] * 3 + ["failed"]
    # nothing: no server row, no session, no state file, no claim; locally a failed record
    side = await host_side(transport, job)
    assert side == {"row": "", "session": False, "state": False, "claim": ""}, side
    local = store.sync.job(job)
    assert (local.status.value, local.exit_code) == ("failed", None), local
    assert "never started" in (local.reason or ""), local.reason
    await _third_start_changes_nothing(store, transport, job)
    store.sync.close()


async def _third_start_changes_nothing(store: AsyncStore, transport: SSHTransport, job: str) -> None:
    async def everything() -> object:
        sagas = [(s.id, s.state, s.failure, [(st.state, st.error) for st in s.steps])
                 for s in store.sync.sagas.sagas()]
        jobs = [j for j in store.sync.jobs() if j.id == job]
        return sagas, jobs, store.sync.history_entries(job), await host_side(transport, job)

    before = await everything()
    third = await recover(store, lambda _h: transport, grace=0)
    assert third.changed == 0
    assert await everything() == before


async def _state_final(t: SSHTransport, job: str) -> bool:
    r = await t.run(f"cat {B}/jobs/{job}.status 2>/dev/null")
    return '"status":"completed"' in r.stdout and '"db":"pending"' not in r.stdout
