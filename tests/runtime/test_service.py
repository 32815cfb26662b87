"""The reconciliation service: one store query per tick, bounded concurrency, drift logged field
by field, fresher updates kept, skipped ticks counted, stop() waits for the tick in flight."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from jobkit.deploy import deploy
from jobkit.lab import Lab, LabHost
from jobkit.models import JobStatus, Source, Verdict
from jobkit.reconcile import ReconcileService
from jobkit.runner import submit
from jobkit.store import AsyncStore, Store, Update
from jobkit.transport import CommandResult
from jobkit.transport_ssh import SSHTransport
from tests.runtime.conftest import LateAnswers, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(params=[pytest.param("local", id="local"),
                        pytest.param("busybox", id="busybox", marks=pytest.mark.container)])
def svc_host(request: pytest.FixtureRequest, jobkit_lab: Lab) -> LabHost:
    """The embedded target, and the lab container farthest from it (BusyBox userland, Alpine role)."""
    return jobkit_lab.start(request.param)


async def _hosts(host: LabHost, store: AsyncStore, t: SSHTransport, n: int) -> list[str]:
    """``n`` hosts for the store: the same machine under n base directories."""
    names = []
    for i in range(n):
        base = f"~/.jobkit-svc-{uuid.uuid4().hex[:6]}-{i}"
        await deploy(t, base)
        name = f"h{i}"
        store.sync.add_host(replace(host.spec, name=name, base_dir=base))
        names.append(name)
    return names


async def _final(t: SSHTransport, base: str, job: str) -> bool:
    r = await t.run(f'cat "$HOME/{base[2:]}/jobs/{job}.status" 2>/dev/null')
    return '"completed"' in r.stdout and '"db":"pending"' not in r.stdout


async def test_a_tick_queries_once_bounds_its_hosts_and_logs_every_drift(
        svc_host: LabHost, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = AsyncStore(Store(tmp_path / "s.db"))
    t = SSHTransport(svc_host.spec)
    names = await _hosts(svc_host, store, t, 5)
    jobs = {}
    for name in names:
        spec = store.sync.host(name)
        jobs[name] = (await submit(t, store, name, ["true"], base_dir=spec.base_dir)).job_id
    for name in names:
        await wait_until(lambda name=name: _final(t, store.sync.host(name).base_dir or "", jobs[name]))
    queries = []
    real_jobs = store.sync.jobs
    store.sync.jobs = lambda *a: queries.append(a) or real_jobs(*a)  # type: ignore[method-assign]
    slow = LateAnswers(t, 0.3)
    service = ReconcileService(store, lambda _n: slow, concurrency=2)
    with caplog.at_level(logging.INFO, logger="jobkit.reconcile"):
        tick = await service.tick()
    assert tick is not None
    assert queries == [(None, True)]  # every active job, every host: one store query
    assert (tick.hosts_probed, tick.reconciled, tick.changed) == (5, 5, 5)
    assert service.peak == 2  # never more hosts at once than asked
    status = {(d.job_id, d.field): (d.cached, d.authoritative) for d in tick.drifts}
    for job in jobs.values():
        assert status[(job, "status")] == ("queued", "completed")
        assert status[(job, "source")] == ("client", "database")
    assert any(f"drift {jobs['h0']}: status: 'queued' -> 'completed'" in r.getMessage() for r in caplog.records)
    again = await service.tick()
    assert again is not None
    # final now: out of the cache, counted as finished (none of them is gone from the store)
    assert (again.reconciled, again.drifts, again.finished, again.stale_removed) == (0, [], 5, 0)
    assert service.cache == {}
    await t.close()
    store.sync.close()


async def test_a_fresher_update_written_during_a_tick_is_kept(svc_host: LabHost, tmp_path: Path) -> None:
    store = AsyncStore(Store(tmp_path / "s.db"))
    t = SSHTransport(svc_host.spec)
    (name,) = await _hosts(svc_host, store, t, 1)
    base = store.sync.host(name).base_dir
    job = (await submit(t, store, name, ["sleep", "30"], base_dir=base)).job_id
    slow = LateAnswers(t, 1.0)
    service = ReconcileService(store, lambda _n: slow)
    tick = asyncio.create_task(service.tick())
    await slow.answered.wait()  # the tick has its evidence; its answer is on the way
    rec = store.sync.job(job)
    fresher = Verdict(job, JobStatus.RUNNING, Source.STATE_FILE, "written after the tick started", alive=True)
    assert store.sync.apply([Update(fresher, rec.version)]).changed == 1  # e.g. a CLI reconcile
    result = await tick
    assert result is not None
    assert result.superseded == 1
    assert store.sync.job(job).reason == "written after the tick started"
    await t.run(f'tmux -S "$HOME/{base[2:]}/tmux.sock" kill-server; true')
    await t.close()
    store.sync.close()


async def test_an_update_written_after_the_tick_started_but_before_it_read_the_job_is_kept(
        svc_host: LabHost, tmp_path: Path) -> None:
    # the write lands between the tick's start (T, the timestamp its verdicts are written as of)
    # and its one store query: the tick reads the fresher row's version, so the version check
    # passes; only the guard "no write over a row changed after T" keeps the fresher update
    store = AsyncStore(Store(tmp_path / "s.db"))
    t = SSHTransport(svc_host.spec)
    (name,) = await _hosts(svc_host, store, t, 1)
    base = store.sync.host(name).base_dir
    job = (await submit(t, store, name, ["sleep", "30"], base_dir=base)).job_id
    read: list[int] = []
    real_jobs = store.sync.jobs

    def jobs_after_a_fresher_write(*a: object) -> list[object]:
        rec = store.sync.job(job)
        fresher = Verdict(job, JobStatus.RUNNING, Source.STATE_FILE, "written after the tick started", alive=True)
        assert store.sync.apply([Update(fresher, rec.version)]).changed == 1  # e.g. a CLI reconcile
        out = real_jobs(*a)  # type: ignore[arg-type]
        read.extend(j.version for j in out if j.id == job)
        return out  # type: ignore[return-value]

    store.sync.jobs = jobs_after_a_fresher_write  # type: ignore[method-assign,assignment]
    try:
        tick = await ReconcileService(store, lambda _n: t).tick()
        assert tick is not None
        assert read == [store.sync.job(job).version]  # the tick saw the fresher row: same version
        assert tick.superseded == 1
        assert store.sync.job(job).reason == "written after the tick started"
    finally:
        await t.run(f'tmux -S "$HOME/{base[2:]}/tmux.sock" kill-server; true')  # type: ignore[index]
        await t.close()
        store.sync.close()


async def test_skipped_ticks_are_counted_and_stop_waits_for_the_tick_in_flight(
        svc_host: LabHost, tmp_path: Path) -> None:
    store = AsyncStore(Store(tmp_path / "s.db"))
    t = SSHTransport(svc_host.spec)
    (name,) = await _hosts(svc_host, store, t, 1)
    await submit(t, store, name, ["sleep", "30"], base_dir=store.sync.host(name).base_dir)
    slow = LateAnswers(t, 1.0)
    seen: list[int] = []
    service = ReconcileService(store, lambda _n: slow, interval=0.3, on_tick=lambda tk: seen.append(tk.reconciled))
    service.start()  # ticks at once
    await slow.answered.wait()
    assert await service.tick() is None  # by hand while one runs: skipped, not doubled
    await service.stop()  # the tick in flight is finished, not cut short
    assert seen == [1]
    assert service.ticks == 1
    assert service.skipped >= 1 + 3  # the one by hand, and those due while the 1 s tick ran
    ticks = service.ticks
    service.trigger()  # stopped: nothing runs any more
    await asyncio.sleep(0)
    assert service.ticks == ticks
    await t.run(f'tmux -S "$HOME/{store.sync.host(name).base_dir[2:]}/tmux.sock" kill-server; true')  # type: ignore[index]
    await t.close()
    store.sync.close()


async def test_a_host_that_goes_away_is_unavailable_and_the_service_goes_on(svc_host: LabHost,
                                                                            tmp_path: Path) -> None:
    from jobkit.errors import HostUnreachable

    store = AsyncStore(Store(tmp_path / "s.db"))
    t = SSHTransport(svc_host.spec)
    names = await _hosts(svc_host, store, t, 2)
    for n in names:
        await submit(t, store, n, ["sleep", "30"], base_dir=store.sync.host(n).base_dir)

    class Down:
        host_name = "h1"

        async def run(self, command: str, **kw: object) -> CommandResult:
            raise HostUnreachable("connection refused", host="h1")

        async def close(self) -> None:
            return None

    down = {"h1": True}
    service = ReconcileService(store, lambda n: Down() if down.get(n) else t)  # type: ignore[return-value,arg-type]
    tick = await service.tick()
    assert tick is not None
    assert tick.hosts_unavailable == ["h1"]
    assert [j.stale for j in store.sync.jobs("h1")] == [True]
    down["h1"] = False
    tick = await service.tick()
    assert tick is not None
    assert tick.hosts_unavailable == []
    assert [j.stale for j in store.sync.jobs("h1")] == [False]
    for n in names:
        await t.run(f'tmux -S "$HOME/{store.sync.host(n).base_dir[2:]}/tmux.sock" kill-server; true')  # type: ignore[index]
    await t.close()
    store.sync.close()


async def test_a_job_its_host_holds_nothing_of_is_counted_and_one_broken_host_never_stops_the_others(
        svc_host: LabHost, tmp_path: Path) -> None:
    store = AsyncStore(Store(tmp_path / "s.db"))
    t = SSHTransport(svc_host.spec)
    good, broken = await _hosts(svc_host, store, t, 2)
    # a job recorded locally that never reached its host (a runner killed right after recording it)
    store.sync.add_job("never-sent", good, ["true"])
    store.sync.add_job("elsewhere", broken, ["true"])

    class Broken:
        host_name = broken

        async def run(self, command: str, **kw: object) -> CommandResult:
            raise RuntimeError("a defect below the transport")

        async def close(self) -> None:
            return None

    service = ReconcileService(store, lambda n: Broken() if n == broken else t)  # type: ignore[return-value,arg-type]
    tick = await service.tick()
    assert tick is not None
    assert tick.vanished == ["never-sent"]
    assert store.sync.job("never-sent").status is JobStatus.QUEUED  # within the grace period: not judged yet
    assert [f.split(":")[0] for f in tick.hosts_failed] == [broken]
    assert (tick.hosts_probed, tick.reconciled) == (1, 1)
    assert store.sync.job("elsewhere").status is JobStatus.QUEUED  # untouched
    await t.close()
    store.sync.close()
