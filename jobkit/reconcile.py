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

from jobkit.backends import Backend, backend_for
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
    before: dict[str, JobRecord] = field(default_factory=dict)  # the store's records the verdicts were computed from
    vanished: list[str] = field(default_factory=list)  # jobs the host answered about and holds nothing of


async def reconcile_host(transport: Transport, store: AsyncStore, host: str, *, base_dir: str | None = None,
                         all_jobs: bool = False, grace: float = 30.0, timeout: float = 5.0,
                         backend: Backend | None = None, jobs: list[JobRecord] | None = None,
                         known_ids: set[str] | None = None, observed_at: float | None = None) -> HostReport:
    """Reconcile the host's jobs (its active ones, or ``all_jobs``) in one round trip. A caller
    that has the jobs already (the service: one store query for every host) passes ``jobs`` (and
    ``known_ids``, every id the store has on that host, for the orphans). Without ``backend``,
    the host's registered scheduler's."""
    if backend is None:
        backend = backend_for((await store.call(store.sync.host, host)).scheduler)
    start = time.monotonic()
    if jobs is None:
        known: list[JobRecord] = await store.call(store.sync.jobs, host, False)
        known_ids = {j.id for j in known}
        jobs = known if all_jobs else [j for j in known if j.status.value in ACTIVE]
    report = HostReport(host)
    # a job queued for longer than the grace period is fenced if nothing of it is on the host
    # (its id is claimed there so a launch still in flight can never start it); client clock
    wall = observed_at if observed_at is not None else time.time()  # also when the evidence is gathered
    queries = [JobQuery(j.id, j.pid, j.proc_start,
                        fence=j.status is JobStatus.QUEUED and j.submitted_at is not None
                        and wall - j.submitted_at > grace, scheduler_id=j.scheduler_job_id) for j in jobs]
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
        if ev.nothing_on_host():
            report.vanished.append(job.id)
        if ev.claim is not None and ev.claim.state == "fenced" and verdict.status is JobStatus.FAILED:
            report.fenced.append(job.id)
        log.info("%s %s", host, verdict.log_line())
    applied = await store.call(store.sync.apply, updates)
    report.changed, report.superseded = applied.changed, applied.superseded
    for job_id in applied.superseded:
        log.info("%s %s: not written: another writer changed the job meanwhile (the next reconciliation looks "
                 "again)", host, job_id)
    report.orphans = sorted(set(result.all_ids) - (known_ids if known_ids is not None else {j.id for j in jobs}))
    report.before = {j.id: j for j in jobs}
    report.seconds = time.monotonic() - start
    return report


TransportFor = Callable[[str], Transport]

#: the fields of a job record the service compares with the authoritative verdict
DRIFT_FIELDS = ("status", "exit_code", "signal", "stale", "conflict", "source")


@dataclass(frozen=True)
class Drift:
    """One field of one job where the store's record and the authoritative verdict differ."""

    job_id: str
    field: str
    cached: object
    authoritative: object

    def line(self) -> str:
        return f"{self.job_id}: {self.field}: {self.cached!r} -> {self.authoritative!r}"


def drifts(before: JobRecord, v: Verdict) -> list[Drift]:
    """Where the store's record differs from the verdict, field by field (pure)."""
    now = {"status": v.status.value, "exit_code": v.exit_code, "signal": v.signal, "stale": v.stale,
           "conflict": v.conflict, "source": v.source.value}
    was = {"status": before.status.value, "exit_code": before.exit_code, "signal": before.signal,
           "stale": before.stale, "conflict": before.conflict, "source": before.status_source}
    out = []
    for f in DRIFT_FIELDS:
        if f in ("exit_code", "signal") and now[f] is None:
            continue  # a verdict without an exit code keeps the recorded one: not a drift
        if was[f] != now[f]:
            out.append(Drift(before.id, f, was[f], now[f]))
    return out


@dataclass
class Tick:
    """What one tick did."""

    started_at: float  # wall clock: every verdict of the tick is written as of this moment
    reconciled: int = 0  # jobs a verdict was computed for
    changed: int = 0  # jobs whose status changed
    drifts: list[Drift] = field(default_factory=list)
    superseded: int = 0  # records another writer changed after the tick started: kept as they are
    stale_removed: int = 0  # cache entries dropped because their jobs exist nowhere any more (gone from the store)
    finished: int = 0  # cache entries dropped because their jobs became final (nothing left to reconcile)
    vanished: list[str] = field(default_factory=list)  # jobs their host holds nothing of any more
    hosts_probed: int = 0
    hosts_unavailable: list[str] = field(default_factory=list)
    hosts_failed: list[str] = field(default_factory=list)  # hosts whose reconciliation raised (logged)
    seconds: float = 0.0
    reports: list[HostReport] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "reconciled": self.reconciled, "changed": self.changed,
                "drifts": len(self.drifts), "superseded": self.superseded, "stale_removed": self.stale_removed,
                "finished": self.finished,
                "vanished": len(self.vanished), "hosts_probed": self.hosts_probed,
                "hosts_unavailable": self.hosts_unavailable, "hosts_failed": self.hosts_failed,
                "seconds": round(self.seconds, 3)}


class ReconcileService:
    """The safety net: reconcile every host now, then every ``interval`` seconds.

    A tick loads every active job in one store query, probes the hosts that have some with at
    most ``concurrency`` hosts at once (a fixed pool of workers, one round trip per host, each
    bounded by ``timeout``), compares each verdict field by field with the cached record (logging
    every drift), and writes each verdict as of the tick's start: a record another writer changed
    after the tick started (a submit, a cancel, another reconcile) is never overwritten by the
    tick's older view (:meth:`jobkit.store.Store.apply`). :attr:`cache` is the service's view: the
    record of every active job as the last tick loaded it. Each tick drops the entries of jobs
    that exist nowhere any more (gone from the store: ``stale_removed``) and of jobs that became
    final (``finished``), each counted; jobs their host holds nothing of any more are counted
    (``vanished``: the merge decides what they are).

    A tick due while one is still running is skipped (counted); :meth:`trigger` runs one now, or,
    when it arrives during a tick, right after that tick (triggers during one tick are coalesced
    into that one next tick); :meth:`stop` cancels the timer and waits for the tick in flight
    (never cuts it short)."""

    def __init__(self, store: AsyncStore, transport_for: TransportFor, *, interval: float = 30.0,
                 grace: float = 30.0, concurrency: int = 4, timeout: float = 5.0,
                 on_tick: Callable[[Tick], None] | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        self.store, self.transport_for, self.interval, self.grace = store, transport_for, interval, grace
        self.concurrency, self.timeout, self.on_tick = concurrency, timeout, on_tick
        self._task: asyncio.Task[None] | None = None
        self._tick_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = False
        self.ticks = 0
        self.skipped = 0
        self.cache: dict[str, JobRecord] = {}  # every active job, as the last tick loaded it
        self.last: Tick | None = None
        self.running = 0  # hosts being probed right now (never more than concurrency)
        self.peak = 0

    async def tick(self) -> Tick | None:
        """One tick now; None (and counted as skipped) when a tick is already running."""
        if self._tick_lock.locked():
            self.skipped += 1
            return None
        async with self._tick_lock:
            return await self._tick()

    async def _tick(self) -> Tick:
        t0 = time.monotonic()
        out = Tick(started_at=time.time())
        hosts = {h.name: h for h in await self.store.call(self.store.sync.hosts)}
        active: list[JobRecord] = await self.store.call(self.store.sync.jobs, None, True)  # one query
        ids_by_host: dict[str, set[str]] = await self.store.call(self.store.sync.job_ids_by_host)
        by_host: dict[str, list[JobRecord]] = {}
        for j in active:
            by_host.setdefault(j.host, []).append(j)
        todo: asyncio.Queue[tuple[str, list[JobRecord]]] = asyncio.Queue()
        for item in sorted(by_host.items()):
            todo.put_nowait(item)

        async def worker() -> None:
            while not todo.empty():
                name, jobs = todo.get_nowait()
                spec = hosts[name]
                self.running += 1
                self.peak = max(self.peak, self.running)
                try:
                    out.reports.append(await reconcile_host(
                        self.transport_for(name), self.store, name, base_dir=spec.base_dir, grace=self.grace,
                        timeout=self.timeout, backend=backend_for(spec.scheduler), jobs=jobs,
                        known_ids=ids_by_host.get(name, set()), observed_at=out.started_at))
                except Exception as exc:  # one host's trouble never stops the others
                    log.exception("%s: reconciliation failed", name)
                    out.hosts_failed.append(f"{name}: {type(exc).__name__}: {exc}")
                finally:
                    self.running -= 1

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(by_host)))))
        out.reports.sort(key=lambda r: r.host)
        for r in out.reports:
            out.hosts_probed += 1
            if not r.reachable:
                out.hosts_unavailable.append(r.host)
            out.reconciled += len(r.verdicts)
            out.changed += r.changed
            out.superseded += len(r.superseded)
            out.vanished.extend(r.vanished)
            for v in r.verdicts:
                if v.job_id in r.superseded or v.job_id not in r.before:
                    continue
                for d in drifts(r.before[v.job_id], v):
                    out.drifts.append(d)
                    log.info("drift %s", d.line())
        still = {j.id for j in active}
        exists = set().union(*ids_by_host.values()) if ids_by_host else set()
        for job_id in [j for j in self.cache if j not in still]:
            del self.cache[job_id]
            if job_id in exists:
                out.finished += 1  # final now: nothing left to reconcile
            else:
                out.stale_removed += 1  # gone from the store: the entry is stale
        self.cache.update({j.id: j for j in active})
        out.seconds = time.monotonic() - t0
        self.ticks += 1
        self.last = out
        if self.on_tick is not None:
            self.on_tick(out)
        return out

    async def _loop(self) -> None:
        while not self._stopping:
            # cleared before the tick, not after: a trigger() that arrives while it runs is kept
            # and runs the next tick as soon as this one ends
            self._wake.clear()
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("reconciliation tick failed")
            took = time.monotonic() - started
            if took > self.interval:
                self.skipped += int(took // self.interval)  # ticks that fell due while this one ran
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, self.interval - took))

    def start(self) -> None:
        """Tick at once, then every interval."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name="jobkit-reconcile")

    def trigger(self) -> None:
        """Run the next tick now, or right after the tick in flight (the timer starts again after
        it); nothing once stopped."""
        if not self._stopping:
            self._wake.set()

    async def stop(self) -> None:
        """Cancel the timer and wait for the tick in flight (never cut it short)."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        async with self._tick_lock:  # a tick started by hand finishes too
            pass
