"""The reconciliation service's timer and cache, with a host that never answers (no SSH: the
service's own behaviour is under test, the probe says "unavailable")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobkit.errors import HostUnreachable
from jobkit.hosts import HostSpec
from jobkit.reconcile import ReconcileService
from jobkit.store import AsyncStore, Store
from jobkit.transport import CommandResult

pytestmark = pytest.mark.unit


class Gate:
    """A host whose answer (connection refused) waits until ``open`` is set."""

    host_name = "h"

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.open = asyncio.Event()

    async def run(self, command: str, **kw: object) -> CommandResult:
        self.asked.set()
        await self.open.wait()
        raise HostUnreachable("connection refused", host=self.host_name)

    async def close(self) -> None:
        return None


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    s = AsyncStore(Store(tmp_path / "store.db"))
    s.sync.add_host(HostSpec("h", "127.0.0.1", 22, "u", tmp_path / "key", None))
    yield s
    s.sync.close()


async def until(predicate: object, seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_trigger_runs_a_tick_now(store: AsyncStore) -> None:
    gate = Gate()
    gate.open.set()
    store.sync.add_job("j1", "h", ["true"])
    service = ReconcileService(store, lambda _n: gate, interval=3600)  # type: ignore[arg-type,return-value]
    service.start()
    try:
        await until(lambda: service.ticks == 1)
        service.trigger()
        await until(lambda: service.ticks == 2)  # not in an hour: now
    finally:
        await service.stop()


async def test_a_trigger_during_a_tick_runs_one_more_right_after_it(store: AsyncStore) -> None:
    gate = Gate()
    store.sync.add_job("j1", "h", ["true"])
    service = ReconcileService(store, lambda _n: gate, interval=3600)  # type: ignore[arg-type,return-value]
    service.start()
    try:
        await gate.asked.wait()  # the first tick is waiting on its host
        service.trigger()  # not lost: the tick after this one runs as soon as it ends
        gate.open.set()
        await until(lambda: service.ticks == 2)
    finally:
        await service.stop()


async def test_the_cache_drops_jobs_gone_from_the_store_and_jobs_now_final_counted_apart(
        store: AsyncStore) -> None:
    gate = Gate()
    gate.open.set()
    for job in ("stays", "ends", "forgotten"):
        store.sync.add_job(job, "h", ["true"])
    service = ReconcileService(store, lambda _n: gate)  # type: ignore[arg-type,return-value]
    first = await service.tick()
    assert first is not None
    assert sorted(service.cache) == ["ends", "forgotten", "stays"]
    assert (first.stale_removed, first.finished) == (0, 0)
    store.sync.mark_failed_launch("ends", "never started")  # final now
    assert store.sync.forget_unlaunched("forgotten", None)  # exists nowhere any more
    second = await service.tick()
    assert second is not None
    assert (second.stale_removed, second.finished, second.reconciled) == (1, 1, 1)
    assert sorted(service.cache) == ["stays"]
    assert second.as_dict()["stale_removed"] == 1
    assert second.as_dict()["finished"] == 1
