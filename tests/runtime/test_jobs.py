"""Submit, finish, fail, cancel, and reconcile through every failure the issue lists."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from jobkit.lab import LabHost
from jobkit.merge import SIGKILL_REASON
from jobkit.models import JobStatus, Source
from jobkit.reconcile import reconcile_host
from jobkit.runner import cancel, submit
from jobkit.store import AsyncStore, Store
from jobkit.transport_ssh import SSHTransport
from tests.runtime.conftest import processes_gone, wait_until
from tests.runtime.transports import AnswerLostAfterStart

pytestmark = pytest.mark.slow
B = '"$HOME/.jobkit"'


def jid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


async def final_on_host(t: SSHTransport, job: str) -> bool:
    """The final state is written and the wrapper is done with it (its last rewrite adds the
    database's outcome: a test that changes the file before that would see it come back)."""
    r = await t.run(f"cat {B}/jobs/{job}.status 2>/dev/null")
    final = '"status":"completed"' in r.stdout or '"status":"failed"' in r.stdout
    return final and '"db":"pending"' not in r.stdout


async def state_on_host(t: SSHTransport, job: str) -> dict[str, object]:
    r = await t.run(f"cat {B}/jobs/{job}.status", check=True)
    return dict(json.loads(r.stdout))


async def test_submit_complete_and_fail(host: LabHost, store: AsyncStore, transport: SSHTransport) -> None:
    ok = (await submit(transport, store, host.target, ["sh", "-c", "echo hi"], job_id=jid("ok"))).job_id
    bad = (await submit(transport, store, host.target, ["sh", "-c", "exit 3"], job_id=jid("bad"))).job_id
    await wait_until(lambda: final_on_host(transport, bad))
    await wait_until(lambda: final_on_host(transport, ok))
    report = await reconcile_host(transport, store, host.target)
    by_id = {v.job_id: v for v in report.verdicts}
    assert (by_id[ok].status, by_id[ok].source, by_id[ok].exit_code) == (JobStatus.COMPLETED, Source.DATABASE, 0)
    assert (by_id[bad].status, by_id[bad].exit_code) == (JobStatus.FAILED, 3)
    assert store.sync.job(ok).status is JobStatus.COMPLETED
    assert [h[0] for h in store.sync.history(bad)] == ["queued", "failed"]


@pytest.mark.parametrize("argv", [
    ["printf", "%s|", "a b", "$(touch /tmp/pwned-jobkit)", "`id`", "'q'", 'd"q', "new\nline", "üñí", "*", ";", "\\"],
])
async def test_the_command_runs_exactly_as_given(host: LabHost, store: AsyncStore, transport: SSHTransport,
                                                 argv: list[str]) -> None:
    job = jid("argv")
    out = f"{B}/out-{job}"
    await submit(transport, store, host.target, ["sh", "-c", 'exec "$@" > "$HOME/.jobkit/out-$0"', job, *argv],
                 job_id=job)
    await wait_until(lambda: final_on_host(transport, job))
    got = (await transport.run(f"cat {out}", check=True)).stdout
    assert got == "".join(a + "|" for a in argv[2:])
    assert (await transport.run("test -e /tmp/pwned-jobkit")).exit_status != 0


async def test_cancel_records_failed_143(host: LabHost, store: AsyncStore, transport: SSHTransport) -> None:
    job = (await submit(transport, store, host.target, ["sleep", "60"], job_id=jid("cancel"))).job_id
    await wait_until(lambda: _has_state(transport, job))
    assert await cancel(transport, job) == "signalled-wrapper"
    await wait_until(lambda: final_on_host(transport, job))
    report = await reconcile_host(transport, store, host.target)
    v = next(v for v in report.verdicts if v.job_id == job)
    assert (v.status, v.exit_code, v.signal) == (JobStatus.FAILED, 143, "TERM")


async def _has_state(t: SSHTransport, job: str) -> bool:
    return (await t.run(f"test -f {B}/jobs/{job}.status")).exit_status == 0


async def test_runner_restarted_while_jobs_finish(host: LabHost, tmp_path: Path, transport: SSHTransport) -> None:
    path = tmp_path / "runner.db"
    first = AsyncStore(Store(path))
    first.sync.add_host(host.spec)
    jobs = [(await submit(transport, first, host.target, ["sh", "-c", f"sleep 1; exit {i}"], job_id=jid("away"))).job_id
            for i in (0, 1)]
    first.sync.touch_last_seen()
    first.sync.close()  # the runner goes away
    for j in jobs:
        await wait_until(lambda j=j: final_on_host(transport, j))
    second = AsyncStore(Store(path))  # ... and comes back
    since = second.sync.last_seen()
    assert since is not None
    await reconcile_host(transport, second, host.target)
    away = second.sync.away_summary(since)
    assert (away["completed"], away["failed"]) == ([jobs[0]], [jobs[1]])
    second.sync.close()


async def test_wrapper_and_job_sigkilled_become_lost_after_grace(host: LabHost, store: AsyncStore,
                                                                 transport: SSHTransport) -> None:
    job = (await submit(transport, store, host.target, ["sleep", "60"], job_id=jid("kill9"))).job_id
    await wait_until(lambda: _has_state(transport, job))
    first = await reconcile_host(transport, store, host.target)
    assert next(v for v in first.verdicts if v.job_id == job).status is JobStatus.RUNNING
    st = await state_on_host(transport, job)
    await transport.run(f"kill -s KILL {st['wrapper_pid']}; kill -s KILL -- -{st['pgid']} 2>/dev/null || "
                        f"kill -s KILL -{st['pgid']}", check=True)

    await wait_until(lambda: processes_gone(transport, (st["pid"], st["proc_start"]),
                                            (st["wrapper_pid"], st.get("wrapper_start"))))
    within = await reconcile_host(transport, store, host.target, grace=60)
    assert next(v for v in within.verdicts if v.job_id == job).status is JobStatus.RUNNING
    after = await reconcile_host(transport, store, host.target, grace=0)
    v = next(v for v in after.verdicts if v.job_id == job)
    # nothing recorded how it ended: unknown, never presented as failed
    assert (v.status, v.exit_code) == (JobStatus.LOST, None)
    assert v.reason.startswith(SIGKILL_REASON)


async def test_tmux_server_killed_is_failed(host: LabHost, store: AsyncStore, transport: SSHTransport) -> None:
    job = (await submit(transport, store, host.target, ["sleep", "60"], job_id=jid("tmux"))).job_id
    await wait_until(lambda: _has_state(transport, job))
    await transport.run(f"tmux -S {B}/tmux.sock kill-server", check=True)
    await wait_until(lambda: final_on_host(transport, job))
    report = await reconcile_host(transport, store, host.target)
    v = next(v for v in report.verdicts if v.job_id == job)
    assert v.status is JobStatus.FAILED
    assert v.signal in ("HUP", "TERM")


async def test_database_locked_answer_from_state_file(host: LabHost, store: AsyncStore,
                                                      transport: SSHTransport) -> None:
    job = (await submit(transport, store, host.target, ["true"], job_id=jid("locked"))).job_id
    await wait_until(lambda: final_on_host(transport, job))
    held, released = f"$HOME/.jobkit/held-{job}", f"$HOME/.jobkit/released-{job}"  # one word for sqlite3's .system
    await transport.run(  # an exclusive lock that also keeps readers out (WAL lets readers in otherwise)
        f"(printf 'PRAGMA locking_mode=EXCLUSIVE;\\nBEGIN EXCLUSIVE;\\nUPDATE jobs SET host = host;\\n"
        f".system touch {held}\\n.system sleep 4\\nCOMMIT;\\n' | sqlite3 {B}/server.db; touch {released}) "
        ">/dev/null 2>&1 &", check=True)

    async def exists(path: str) -> bool:
        return (await transport.run(f"test -e {path}")).exit_status == 0

    await wait_until(lambda: exists(held))
    start = time.monotonic()
    report = await reconcile_host(transport, store, host.target)
    assert time.monotonic() - start < 5
    v = next(v for v in report.verdicts if v.job_id == job)
    assert (v.status, v.source, v.said["database"]) == (JobStatus.COMPLETED, Source.STATE_FILE, "locked")
    await wait_until(lambda: exists(released))


async def test_state_file_deleted_answer_from_database(host: LabHost, store: AsyncStore,
                                                       transport: SSHTransport) -> None:
    job = (await submit(transport, store, host.target, ["sh", "-c", "exit 5"], job_id=jid("nofile"))).job_id
    await wait_until(lambda: final_on_host(transport, job))
    await transport.run(f"rm {B}/jobs/{job}.status", check=True)
    v = next(v for v in (await reconcile_host(transport, store, host.target)).verdicts if v.job_id == job)
    assert (v.status, v.exit_code, v.source, v.said["state_file"]) == (JobStatus.FAILED, 5, Source.DATABASE, "missing")


async def test_both_gone_process_alive_is_running_by_liveness(host: LabHost, store: AsyncStore,
                                                              transport: SSHTransport) -> None:
    job = (await submit(transport, store, host.target, ["sleep", "60"], job_id=jid("alive"))).job_id
    await wait_until(lambda: _has_state(transport, job))
    await reconcile_host(transport, store, host.target)  # learns pid + start time
    await transport.run(f"rm {B}/jobs/{job}.status; sqlite3 {B}/server.db \"DELETE FROM jobs WHERE id = '{job}'\"",
                        check=True)
    v = next(v for v in (await reconcile_host(transport, store, host.target)).verdicts if v.job_id == job)
    assert (v.status, v.source) == (JobStatus.RUNNING, Source.LIVENESS)
    assert v.said == {"database": "no_row", "state_file": "missing", "liveness": "alive"}
    await cancel(transport, job)


async def test_sessions_are_targeted_exactly(host: LabHost, store: AsyncStore, transport: SSHTransport) -> None:
    """FAILURE-MODES 17: `-t job1` would also match `job10`; the runner always uses `=job1`."""
    base = jid("exact")
    long_job = (await submit(transport, store, host.target, ["sleep", "60"], job_id=base + "0")).job_id
    short = (await submit(transport, store, host.target, ["sleep", "60"], job_id=base)).job_id
    await wait_until(lambda: _has_state(transport, long_job))
    await wait_until(lambda: _has_state(transport, short))
    await transport.run(f"rm {B}/jobs/{short}.status", check=True)  # cancel must fall back to the session
    assert await cancel(transport, short) == "killed-session"

    async def sessions() -> list[str]:
        return (await transport.run(f"tmux -S {B}/tmux.sock list-sessions -F '#{{session_name}}'")).stdout.split()

    async def short_gone() -> bool:
        return short not in await sessions()

    await wait_until(short_gone)
    assert long_job in await sessions()
    await cancel(transport, long_job)


async def test_a_retried_start_whose_first_attempt_reached_the_host_never_starts_the_job_twice(
        host: LabHost, store: AsyncStore, transport: SSHTransport, tmp_path: Path) -> None:
    from jobkit.backends import LaunchRequest, LaunchState, TmuxBackend
    from jobkit.errors import ConfigError, JobIdInUse, OutcomeUnknown
    from jobkit.runner import list_sessions, recover
    from jobkit.sagas import SagaState

    job = jid("retry")
    count = f"$HOME/.jobkit/count-{job}"
    argv = ["sh", "-c", f'echo ran >>"{count}"; sleep 30']
    # the host starts the session, then the client's bound fires before the answer arrives
    with pytest.raises(OutcomeUnknown):
        await submit(AnswerLostAfterStart(transport), store, host.target, argv, job_id=job)
    (saga,) = store.sync.sagas.sagas(name="submit")
    assert [(s.name, s.state.value) for s in saga.steps][-1] == ("start", "running")
    # the saga's steps retried as submit runs them (the same submission: its token), one by one
    i = saga.input
    req = LaunchRequest(i["job_id"], i["argv"], i["base_dir"], i["token"], i["env"], i["cwd"], i["name"])
    backend = TmuxBackend()
    assert (await backend.prepare(transport, req, timeout=10)).state is LaunchState.LAUNCHED
    assert (await backend.register(transport, req, timeout=10)).state is LaunchState.ALREADY
    assert (await backend.start(transport, req, timeout=10)).state is LaunchState.ALREADY
    await wait_until(lambda: _has_state(transport, job))
    # a submit retried with the same id: refused by this store, and by the host for any other
    # submission (another token), never started again
    with pytest.raises(ConfigError, match="already exists in the store"):
        await submit(transport, store, host.target, argv, job_id=job)
    other = AsyncStore(Store(tmp_path / "other.db"))
    other.sync.add_host(host.spec)
    with pytest.raises(JobIdInUse):
        await submit(transport, other, host.target, argv, job_id=job)
    other.sync.close()
    # the next start of a runner finds the job started: a complete job, not a second one
    assert (await recover(store, lambda _h: transport, grace=0)).completed == [saga.id]
    assert store.sync.sagas.get(saga.id).state is SagaState.COMPLETED
    assert store.sync.job(job).status is JobStatus.QUEUED  # never marked failed by the retries
    assert (await list_sessions(transport)).count(job) == 1
    assert (await transport.run(f'cat "{count}"')).stdout == "ran\n"  # the job ran once
    claims = await transport.run(f"grep -c 'claimed' {B}/jobs/{job}.wrapper.log")
    assert claims.stdout.strip() == "1"  # one wrapper run
    await cancel(transport, job)


async def test_a_job_runs_in_the_directory_it_was_given(host: LabHost, store: AsyncStore,
                                                        transport: SSHTransport) -> None:
    from jobkit.errors import LaunchFailed

    await transport.run(f"mkdir -p {B}/work-dir", check=True)
    job = (await submit(transport, store, host.target, ["sh", "-c", "pwd >here"], job_id=jid("cwd"),
                        cwd="~/.jobkit/work-dir", name="in a dir")).job_id
    await wait_until(lambda: final_on_host(transport, job))
    assert (await transport.run(f"cat {B}/work-dir/here", check=True)).stdout.strip().endswith("/.jobkit/work-dir")
    rec = store.sync.job(job)
    assert (rec.name, rec.work_dir) == ("in a dir", "~/.jobkit/work-dir")
    missing = jid("nocwd")
    with pytest.raises(LaunchFailed, match="no directory"):
        await submit(transport, store, host.target, ["true"], job_id=missing, cwd="~/no-such-dir-here")
    assert store.sync.job(missing).status is JobStatus.FAILED
    row = await transport.run(f"sqlite3 {B}/server.db \"SELECT count(*) FROM jobs WHERE id = '{missing}'\"")
    assert row.stdout.strip() == "0"  # nothing left on the host


async def test_a_host_without_its_database_refuses_the_launch_and_creates_none(
        host: LabHost, store: AsyncStore, transport: SSHTransport) -> None:
    from jobkit.errors import LaunchFailed

    base = f"~/.jobkit-nodb-{uuid.uuid4().hex[:6]}"
    with pytest.raises(LaunchFailed, match=r"no \S*server\.db"):
        await submit(transport, store, host.target, ["true"], job_id=jid("nodb"), base_dir=base)
    assert (await transport.run(f"test -e \"$HOME/{base[2:]}/server.db\"")).exit_status != 0
