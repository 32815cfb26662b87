"""An unreachable or slow host: unavailable, last status kept (stale), never failed, bounded."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from jobkit.lab import Lab, LabHost
from jobkit.models import JobStatus
from jobkit.reconcile import reconcile_host
from jobkit.runner import submit
from jobkit.store import AsyncStore
from jobkit.transport_ssh import SSHTransport
from tests.runtime.conftest import TARGETS, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.destructive]
B = '"$HOME/.jobkit"'


@pytest.fixture(params=TARGETS)
def own_host(request: pytest.FixtureRequest, jobkit_lab: Lab) -> Iterator[LabHost]:
    host = jobkit_lab.start(request.param, fresh=True)
    yield host
    host.stop()


async def _running_job(host: LabHost, store: AsyncStore, t: SSHTransport) -> str:
    store.sync.add_host(host.spec)
    job = (await submit(t, store, host.target, ["sleep", "60"], job_id=f"un-{uuid.uuid4().hex[:8]}")).job_id

    async def has_state() -> bool:
        return (await t.run(f"test -f {B}/jobs/{job}.status")).exit_status == 0

    await wait_until(has_state)
    report = await reconcile_host(t, store, host.target)
    assert report.verdicts[0].status is JobStatus.RUNNING
    return job


def _cut(host: LabHost) -> None:
    if host.local is not None:
        host.local.call_in_thread(host.local.stop_accepting)
    else:
        host.container.get_wrapped_container().stop(timeout=1)


def _slow(host: LabHost) -> None:
    if host.local is not None:
        host.local.delay = 8.0  # every command answers after 8 s
    else:
        host.container.get_wrapped_container().pause()  # accepts nothing, answers nothing


def _unslow(host: LabHost) -> None:
    if host.local is not None:
        host.local.delay = 0.0
    else:
        host.container.get_wrapped_container().unpause()


async def test_unreachable_host_is_unavailable_and_keeps_the_last_status(own_host: LabHost,
                                                                         store: AsyncStore) -> None:
    t = SSHTransport(own_host.spec)
    job = await _running_job(own_host, store, t)
    await t.close()
    _cut(own_host)
    t = SSHTransport(own_host.spec)
    start = time.monotonic()
    report = await reconcile_host(t, store, own_host.target, timeout=5)
    assert time.monotonic() - start < 6
    assert not report.reachable
    v = report.verdicts[0]
    assert (v.job_id, v.status, v.stale) == (job, JobStatus.RUNNING, True)
    rec = store.sync.job(job)
    assert (rec.status, rec.stale) == (JobStatus.RUNNING, True)
    await t.close()


async def test_host_slower_than_the_timeout_returns_within_timeout_plus_one(own_host: LabHost,
                                                                            store: AsyncStore) -> None:
    t = SSHTransport(own_host.spec)
    job = await _running_job(own_host, store, t)
    _slow(own_host)
    try:
        start = time.monotonic()
        report = await reconcile_host(t, store, own_host.target, timeout=5)
        elapsed = time.monotonic() - start
    finally:
        _unslow(own_host)
    assert elapsed < 6, elapsed
    assert not report.reachable
    assert (report.verdicts[0].status, report.verdicts[0].stale) == (JobStatus.RUNNING, True)
    again = await reconcile_host(t, store, own_host.target, timeout=5)  # the host is back
    assert again.reachable
    assert (again.verdicts[0].job_id, again.verdicts[0].status, again.verdicts[0].stale) == \
        (job, JobStatus.RUNNING, False)
    await t.close()
