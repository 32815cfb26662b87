"""Verdicts that must never be wrong, on a real host: two writers on one store, a submit whose
answer is lost, an id another store already used, a wrapper killed while its job runs on, a job
that never started."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from jobkit.errors import JobIdInUse, JobkitError, OutcomeUnknown
from jobkit.lab import LabHost
from jobkit.merge import NEVER_STARTED_REASON, SIGKILL_REASON, UNKNOWN_EXIT
from jobkit.models import JobStatus
from jobkit.reconcile import reconcile_host
from jobkit.runner import submit
from jobkit.store import AsyncStore, Store
from jobkit.transport_ssh import SSHTransport
from tests.runtime.conftest import LateAnswers, processes_gone, wait_until
from tests.runtime.transports import AnswerLostAfterStart

pytestmark = pytest.mark.slow
B = '"$HOME/.jobkit"'


def jid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


async def state_of(t: SSHTransport, job: str) -> dict[str, object] | None:
    r = await t.run(f"cat {B}/jobs/{job}.status 2>/dev/null")
    return dict(json.loads(r.stdout)) if r.stdout.strip() else None


async def has_status(t: SSHTransport, job: str, *statuses: str) -> bool:
    st = await state_of(t, job)
    return st is not None and st.get("status") in statuses


async def test_two_stores_on_one_file_and_a_late_reconciler_never_move_history_back(
        host: LabHost, tmp_path: Path, transport: SSHTransport) -> None:
    path = tmp_path / "shared.db"
    service, cli = AsyncStore(Store(path)), AsyncStore(Store(path))
    service.sync.add_host(host.spec)
    go = f"go-{uuid.uuid4().hex[:8]}"
    job = (await submit(transport, service, host.target,
                        ["sh", "-c", f'while [ ! -e "$HOME/.jobkit/{go}" ]; do sleep 0.05; done'],
                        job_id=jid("late"))).job_id
    await wait_until(lambda: has_status(transport, job, "running"))
    assert (await reconcile_host(transport, service, host.target)).verdicts[0].status is JobStatus.RUNNING
    slow = LateAnswers(transport, 3.0)
    late = asyncio.create_task(reconcile_host(slow, cli, host.target))  # sees `running`, answers 3 s late
    await slow.answered.wait()
    await transport.run(f"touch {B}/{go}", check=True)  # the job ends while that answer travels
    await wait_until(lambda: has_status(transport, job, "completed"))
    fresh = await reconcile_host(transport, service, host.target)
    assert fresh.verdicts[0].status is JobStatus.COMPLETED
    report = await late
    assert report.superseded == [job]
    assert [h[0] for h in cli.sync.history(job)] == ["queued", "running", "completed"]
    assert cli.sync.job(job).status is JobStatus.COMPLETED
    service.sync.close()
    cli.sync.close()


async def test_a_submit_whose_answer_is_lost_stays_queued_and_reconciliation_finds_the_job(
        host: LabHost, store: AsyncStore, transport: SSHTransport) -> None:
    from jobkit.runner import recover
    from jobkit.sagas import SagaState

    job = jid("lostanswer")
    with pytest.raises(OutcomeUnknown) as caught:
        await submit(AnswerLostAfterStart(transport), store, host.target, ["sh", "-c", "exit 0"], job_id=job)
    assert caught.value.job_id == job
    rec = store.sync.job(job)
    assert rec.status is JobStatus.QUEUED, rec  # never `failed`: the job may be running
    saga = store.sync.sagas.sagas(name="submit")[0]
    assert (saga.state, saga.steps[-1].name, saga.steps[-1].state.value) == (SagaState.RUNNING, "start", "running")
    await wait_until(lambda: has_status(transport, job, "completed"), seconds=20)
    report = await reconcile_host(transport, store, host.target)
    assert (report.verdicts[0].status, report.verdicts[0].exit_code) == (JobStatus.COMPLETED, 0)
    assert [h[0] for h in store.sync.history(job)] == ["queued", "completed"]
    # the saga is resolved by the next start of a runner, once the grace period has passed
    assert (await recover(store, lambda _h: transport, grace=3600)).busy == [saga.id]
    done = await recover(store, lambda _h: transport, grace=0)
    assert done.completed == [saga.id]
    assert store.sync.sagas.get(saga.id).state is SagaState.COMPLETED


async def test_an_id_already_used_on_the_host_by_another_store_is_refused_and_never_attributed(
        host: LabHost, tmp_path: Path, transport: SSHTransport) -> None:
    mine, other = AsyncStore(Store(tmp_path / "mine.db")), AsyncStore(Store(tmp_path / "other.db"))
    for s in (mine, other):
        s.sync.add_host(host.spec)
    job = jid("dup")
    await submit(transport, mine, host.target, ["sh", "-c", "exit 0"], job_id=job)
    with pytest.raises(JobIdInUse, match=f"job id {job} already used on {host.target}"):
        await submit(transport, other, host.target, ["sh", "-c", "exit 5"], job_id=job)
    assert other.sync.jobs() == []  # nothing recorded
    await wait_until(lambda: has_status(transport, job, "completed"))
    report = await reconcile_host(transport, other, host.target, all_jobs=True)
    assert report.verdicts == []
    assert job in report.orphans  # the host's job is someone else's
    # a store that believes it submitted that id (its answer was lost before the INSERT) is
    # never given the other store's record: its job never started
    await other.call(other.sync.add_job, job, host.target, ["sh", "-c", "exit 5"], None, "0123456789abcdef")
    v = (await reconcile_host(transport, other, host.target)).verdicts[0]
    assert (v.status, v.exit_code) == (JobStatus.FAILED, None)
    assert v.reason.startswith(NEVER_STARTED_REASON)
    assert (await reconcile_host(transport, mine, host.target)).verdicts[0].status is JobStatus.COMPLETED
    mine.sync.close()
    other.sync.close()


async def test_a_job_outliving_its_killed_wrapper_ends_lost_never_failed(host: LabHost, store: AsyncStore,
                                                                          transport: SSHTransport) -> None:
    go = f"go-{uuid.uuid4().hex[:8]}"
    seen = (await submit(transport, store, host.target,
                         ["sh", "-c", f'while [ ! -e "$HOME/.jobkit/{go}" ]; do sleep 0.05; done; exit 0'],
                         job_id=jid("orph"))).job_id
    unseen = (await submit(transport, store, host.target,
                           ["sh", "-c", f'while [ ! -e "$HOME/.jobkit/{go}" ]; do sleep 0.05; done; exit 0'],
                           job_id=jid("orphu"))).job_id
    for job in (seen, unseen):
        await wait_until(lambda job=job: has_status(transport, job, "running"))
    await reconcile_host(transport, store, host.target)  # both running, wrappers alive

    async def kill_wrapper(job: str) -> None:
        st = await state_of(transport, job)
        assert st is not None
        await transport.run(f"kill -s KILL {st['wrapper_pid']}", check=True)
        # kill(2) returns before the process is torn down: wait until it is gone (or a zombie)
        await wait_until(lambda: processes_gone(transport, (st["wrapper_pid"], st["wrapper_start"])))

    # a reconciliation sees `seen` alive with its wrapper gone; none sees `unseen` in that state
    await kill_wrapper(seen)
    r = await reconcile_host(transport, store, host.target)
    v = next(v for v in r.verdicts if v.job_id == seen)
    assert (v.status, v.alive) == (JobStatus.RUNNING, True)
    assert "wrapper is gone" in v.reason
    await kill_wrapper(unseen)
    await transport.run(f"touch {B}/{go}", check=True)  # both jobs end 0; nothing can record it

    async def both_gone() -> bool:
        procs = []
        for job in (seen, unseen):
            st = await state_of(transport, job)
            assert st is not None
            procs.append((st["pid"], st["proc_start"]))
        return await processes_gone(transport, *procs)

    await wait_until(both_gone)
    after = {v.job_id: v for v in (await reconcile_host(transport, store, host.target, grace=0)).verdicts}
    assert after[seen].status is JobStatus.LOST, after[seen].log_line()
    assert "wrapper killed" in after[seen].reason
    assert UNKNOWN_EXIT in after[seen].reason
    assert after[unseen].status is JobStatus.LOST, after[unseen].log_line()
    assert after[unseen].reason.startswith(SIGKILL_REASON)
    assert UNKNOWN_EXIT in after[unseen].reason
    for job in (seen, unseen):
        assert "failed" not in [h[0] for h in store.sync.history(job)]


async def test_a_job_that_never_started_is_fenced_and_can_then_never_start(host: LabHost, store: AsyncStore,
                                                                         transport: SSHTransport) -> None:
    job = jid("never")
    await store.call(store.sync.add_job, job, host.target, ["true"], time.time() - 120, "fedcba9876543210")
    await transport.run(f"sqlite3 -cmd '.timeout 5000' {B}/server.db \"INSERT INTO jobs (id, token) VALUES "
                        f"('{job}', 'fedcba9876543210')\"", check=True)
    early = await reconcile_host(transport, store, host.target, grace=600)
    assert early.verdicts[0].status is JobStatus.QUEUED  # a launch may still be in flight
    report = await reconcile_host(transport, store, host.target, grace=30)
    v = report.verdicts[0]
    assert (v.status, v.exit_code) == (JobStatus.FAILED, None), v.log_line()
    assert v.reason.startswith(NEVER_STARTED_REASON)
    assert report.fenced == [job]
    # the launch that arrives late cannot start it: the verdict stays true
    r = await transport.run(f"{B}/bin/job_wrapper.sh {job} touch {B}/ran-{job}")
    assert r.exit_status == 67, r.stderr
    assert (await transport.run(f"test -e {B}/ran-{job}")).exit_status != 0
    again = await reconcile_host(transport, store, host.target, all_jobs=True)
    assert next(v for v in again.verdicts if v.job_id == job).status is JobStatus.FAILED


async def test_a_wrappers_pid_reused_by_another_process_is_neither_alive_nor_signalled(
        host: LabHost, store: AsyncStore, transport: SSHTransport) -> None:
    """pids wrap (pid_max is 32768 on many hosts): a dead wrapper's pid may name a stranger."""
    from jobkit.runner import cancel

    job = jid("reuse")
    stranger = int((await transport.run("sleep 60 >/dev/null 2>&1 & echo $!", check=True)).stdout)
    try:
        await store.call(store.sync.add_job, job, host.target, ["true"])
        state = {"version": 1, "id": job, "status": "running", "exit_code": None, "pid": stranger,
                 "pgid": stranger, "proc_start": 1, "wrapper_pid": stranger, "wrapper_start": 1,
                 "started_epoch": int(time.time()) - 100}
        await transport.run(f"cat >{B}/jobs/{job}.status", stdin=json.dumps(state) + "\n", check=True)
        v = (await reconcile_host(transport, store, host.target, grace=0)).verdicts[0]
        assert v.said["liveness"] == "gone"
        assert v.status is JobStatus.LOST, v.log_line()  # not "wrapper still finishing" forever
        with pytest.raises(JobkitError, match="not found"):
            await cancel(transport, job)
        assert (await transport.run(f"kill -0 {stranger}")).exit_status == 0, "cancel signalled a stranger"
    finally:
        await transport.run(f"kill {stranger}; true")
