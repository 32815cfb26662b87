"""Reconciliation: one probe per host, the pure merge per job, one store transaction per host,
one log line per job; plus the periodic service that runs it as a safety net."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobkit.backends import Backend, TmuxBackend, backend_for
from jobkit.models import Evidence, JobStatus, Verdict
from jobkit.probe import JobQuery
from jobkit.store import ACTIVE, AsyncStore, JobRecord, Update
from jobkit.transport import Transport

log = logging.getLogger("jobkit.reconcile")


@dataclass
class HostReport:
    host: str
    verdicts: list[Verdict] = field(default_factory=list)
    changed: int = 0
    superseded: list[str] = field(default_factory=list)  # another writer changed these meanwhile
    fenced: list[str] = field(default_factory=list)  # never started: their ids are now fenced
    orphans: list[str] = field(default_factory=list)
    reachable: bool = True
    error: str | None = None
    seconds: float = 0.0


async def reconcile_host(transport: Transport, store: AsyncStore, host: str, *, base_dir: str | None = None,
                         all_jobs: bool = False, grace: float = 30.0, timeout: float = 5.0,
                         backend: Backend | None = None) -> HostReport:
    backend = backend or TmuxBackend()
    start = time.monotonic()
    known: list[JobRecord] = await store.call(store.sync.jobs, host, False)
    known_ids = {j.id for j in known}
    jobs = known if all_jobs else [j for j in known if j.status.value in ACTIVE]
    report = HostReport(host)
    # a job queued for longer than the grace period is fenced if nothing of it is on the host
    # (its id is claimed there so a launch still in flight can never start it); client clock
    wall = time.time()  # also when the evidence is gathered
    queries = [JobQuery(j.id, j.pid, j.proc_start,
                        fence=j.status is JobStatus.QUEUED and j.submitted_at is not None
                        and wall - j.submitted_at > grace) for j in jobs]
    result = await backend.probe(transport, queries, base_dir, timeout=timeout)
    report.reachable, report.error = result.host.reachable, result.host.error
    updates: list[Update] = []
    for job in jobs:
        ev = result.evidence.get(job.id)
        if ev is None:  # host unreachable: merge says unavailable
            ev = Evidence(job.id, result.host)
        verdict = backend.merge(ev, job.known(), grace=grace)
        facts: dict[str, Any] = {}
        if ev.file is not None and ev.file.state == "ok":
            facts = {"pid": ev.file.pid, "proc_start": ev.file.proc_start, "boot_id": ev.file.boot_id,
                     "started_epoch": ev.file.started_epoch, "completed_epoch": ev.file.completed_epoch}
        elif ev.db is not None and ev.db.state == "ok":
            facts = {"pid": ev.db.pid, "boot_id": ev.db.boot_id, "started_epoch": ev.db.started_epoch,
                     "completed_epoch": ev.db.completed_epoch}
        facts["host_now"] = result.host.now_epoch
        updates.append(Update(verdict, job.version, facts, wall))
        report.verdicts.append(verdict)
        if ev.claim is not None and ev.claim.state == "fenced" and verdict.status is JobStatus.FAILED:
            report.fenced.append(job.id)
        log.info("%s %s", host, verdict.log_line())
    applied = await store.call(store.sync.apply, updates)
    report.changed, report.superseded = applied.changed, applied.superseded
    for job_id in applied.superseded:
        log.info("%s %s: not written: another writer changed the job meanwhile (the next reconciliation looks "
                 "again)", host, job_id)
    report.orphans = sorted(set(result.all_ids) - known_ids)
    report.seconds = time.monotonic() - start
    return report


TransportFor = Callable[[str], Transport]


class ReconcileService:
    """Reconcile every host now and then every ``interval`` seconds; a tick still running when
    the next is due is not doubled; :meth:`stop` cancels the timer and awaits the tick in flight."""

    def __init__(self, store: AsyncStore, transport_for: TransportFor, *, interval: float = 30.0,
                 grace: float = 30.0) -> None:
        self.store, self.transport_for, self.interval, self.grace = store, transport_for, interval, grace
        self._task: asyncio.Task[None] | None = None
        self._tick_lock = asyncio.Lock()
        self.ticks = 0
        self.skipped = 0
        self.last: list[HostReport] = []

    async def tick(self) -> list[HostReport]:
        if self._tick_lock.locked():
            self.skipped += 1
            return []
        async with self._tick_lock:
            hosts = await self.store.call(self.store.sync.hosts)
            reports = await asyncio.gather(*(
                reconcile_host(self.transport_for(h.name), self.store, h.name, base_dir=h.base_dir, grace=self.grace,
                               backend=backend_for(h.scheduler))
                for h in hosts))
            self.ticks += 1
            self.last = list(reports)
            return self.last

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("reconciliation tick failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="jobkit-reconcile")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._tick_lock:  # a tick in flight finishes first
            pass
