"""The S- clauses of conformance/SPEC.md: a scheduler backend on a real SLURM cluster of the lab.

Each clause submits jobs through the library (the saga submit, a store of its own), makes its
fault on the cluster (:mod:`jobkit.faults.slurm`, restored whatever happens), reconciles through
the backend under test and checks the verdicts. ``jobkit conformance --target slurm`` runs them;
the teeth tests run them against broken backends (:data:`BROKEN`), which must fail theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobkit.backends.slurm import SlurmBackend
from jobkit.conformance.runner import ERROR, FAIL, NA, PASS, Result
from jobkit.errors import TransportError
from jobkit.faults.slurm import SlurmFault, SlurmFaultError, inject_slurm
from jobkit.lab.slurm import Cluster
from jobkit.models import Evidence, JobStatus, Known, Source, Verdict
from jobkit.reconcile import reconcile_host
from jobkit.runner import submit
from jobkit.store import AsyncStore, Store
from jobkit.transport_ssh import SSHTransport


class NotApplicable(Exception):
    """The clause's fault cannot be made on this cluster."""


class Harness:
    """One clause's store, transport and backend against one cluster."""

    def __init__(self, spec: Any, cluster: Cluster, backend: Any) -> None:
        self.spec, self.cluster, self.backend = spec, cluster, backend
        self._dir = tempfile.TemporaryDirectory(prefix="jobkit-sclause-")
        self.store = AsyncStore(Store(Path(self._dir.name) / "store.db"))
        self.store.sync.add_host(spec)
        self.t = SSHTransport(spec)
        self.notes: list[str] = []
        self.sids: list[str] = []  # every SLURM job the clause submitted

    async def close(self) -> None:
        """Cancel what the clause left in the queue (through the lab, not the backend under
        test: the clause may have broken the login node's SSH), so the next clause finds the
        nodes idle; then the transport, the store and the temporary directory."""
        try:
            if self.sids:
                await asyncio.get_running_loop().run_in_executor(None, self._scancel_all)
        finally:
            await self.t.close()
            self.store.sync.close()
            self._dir.cleanup()

    def _scancel_all(self) -> None:
        ids = " ".join(self.sids)
        login = self.cluster.layout.login
        self.cluster.exec(login, f"scancel {ids} 2>/dev/null; true", timeout=15)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # the whole queue (pending, running, completing), not `-j IDS`: squeue fails on an id
            # already purged from the controller
            rc, out = self.cluster.exec(login, "squeue -h -o %i", timeout=10)
            if rc == 0 and not set(out.split()) & set(self.sids):
                return
            time.sleep(0.5)
        raise SlurmFaultError(f"the clause's jobs {ids} were still in the queue 30 s after scancel")

    async def submit(self, argv: list[str], **resources: str) -> tuple[str, str]:
        s = await submit(self.t, self.store, self.spec.name, argv, backend=self.backend, resources=resources)
        sid = self.store.sync.job(s.job_id).scheduler_job_id
        assert sid, f"no SLURM id recorded for {s.job_id}"
        self.sids.append(sid)
        return s.job_id, sid

    async def verdict(self, job: str, grace: float = 5.0) -> Verdict:
        report = await reconcile_host(self.t, self.store, self.spec.name, all_jobs=True, grace=grace,
                                      backend=self.backend, timeout=10)
        v = next(v for v in report.verdicts if v.job_id == job)
        self.notes.append(v.log_line())
        return v

    async def until(self, job: str, ok: Callable[[Verdict], bool], seconds: float, grace: float = 5.0) -> Verdict:
        deadline = time.monotonic() + seconds
        while True:
            v = await self.verdict(job, grace)
            if ok(v) or time.monotonic() > deadline:
                return v
            await asyncio.sleep(0.5)

    def fault(self, fault: SlurmFault, **kw: str | None) -> Any:
        return inject_slurm(fault, self.cluster, **kw)  # type: ignore[arg-type]


SCheck = Callable[[Harness], Awaitable[None]]


@dataclass(frozen=True)
class SClause:
    id: str
    title: str
    fault: SlurmFault | None
    check: SCheck
    needs_accounting: bool = False


S_CLAUSES: list[SClause] = []


def s_clause(cid: str, title: str, fault: SlurmFault | None,
             needs_accounting: bool = False) -> Callable[[SCheck], SCheck]:
    def reg(fn: SCheck) -> SCheck:
        S_CLAUSES.append(SClause(cid, title, fault, fn, needs_accounting))
        return fn
    return reg


def _running(v: Verdict) -> bool:
    return v.status is JobStatus.RUNNING


@s_clause("S-1", "exit codes through the scheduler: 0 is completed, N is failed with N", None)
async def s1(h: Harness) -> None:
    ok, _ = await h.submit(["sh", "-c", "exit 0"])
    bad, _ = await h.submit(["sh", "-c", "exit 5"])
    v = await h.until(ok, lambda v: v.status.final, 30)
    assert (v.status, v.exit_code) == (JobStatus.COMPLETED, 0), v.log_line()
    v = await h.until(bad, lambda v: v.status.final, 30)
    assert (v.status, v.exit_code) == (JobStatus.FAILED, 5), v.log_line()


@s_clause("S-2", "not in the queue is never by itself completed", SlurmFault.PURGE_WHILE_ACCOUNTING_DOWN,
          needs_accounting=True)
async def s2(h: Harness) -> None:
    job, sid = await h.submit(["sleep", "300"])
    assert _running(await h.until(job, _running, 30))
    # accounting goes down, the job is cancelled and purged from the controller: nobody knows it
    inj = h.fault(SlurmFault.PURGE_WHILE_ACCOUNTING_DOWN, sid=sid)
    try:
        v = await h.verdict(job, grace=0)
        assert v.status is not JobStatus.COMPLETED, f"completed from absence: {v.log_line()}"
        # the wrapper's own record of the TERM is evidence; absence alone never decides
        assert v.status in (JobStatus.RUNNING, JobStatus.LOST) or (
            v.status is JobStatus.FAILED and v.signal == "TERM" and v.source is Source.STATE_FILE), v.log_line()
    finally:
        inj.restore()


@s_clause("S-3", "a job that reaches its time limit is timeout, never completed", SlurmFault.TIME_LIMIT)
async def s3(h: Harness) -> None:
    job, sid = await h.submit(["sleep", "600"], time="1")
    assert _running(await h.until(job, _running, 30))
    h.fault(SlurmFault.TIME_LIMIT, sid=sid).restore()
    v = await h.until(job, lambda v: v.status.final, 150)
    assert v.status is JobStatus.TIMEOUT, v.log_line()


@s_clause("S-4", "the controller down is no information: the last status kept, stale", SlurmFault.SLURMCTLD_STOPPED)
async def s4(h: Harness) -> None:
    job, _ = await h.submit(["sleep", "300"])
    assert _running(await h.until(job, _running, 30))
    inj = h.fault(SlurmFault.SLURMCTLD_STOPPED)
    try:
        v = await h.verdict(job, grace=0)
        assert (v.status, v.stale) == (JobStatus.RUNNING, True), v.log_line()
    finally:
        inj.restore()


@s_clause("S-5", "accounting down is no information: a job still in the queue keeps its queue state",
          SlurmFault.SLURMDBD_STOPPED, needs_accounting=True)
async def s5(h: Harness) -> None:
    job, _ = await h.submit(["sleep", "300"])
    assert _running(await h.until(job, _running, 30))
    inj = h.fault(SlurmFault.SLURMDBD_STOPPED)
    try:
        v = await h.verdict(job, grace=0)
        assert v.status is JobStatus.RUNNING, v.log_line()
    finally:
        inj.restore()


@s_clause("S-6", "a requeued job goes back to pending, never a premature final", SlurmFault.REQUEUE)
async def s6(h: Harness) -> None:
    job, sid = await h.submit(["sleep", "300"])
    assert _running(await h.until(job, _running, 30))
    h.fault(SlurmFault.REQUEUE, sid=sid).restore()
    v = await h.until(job, lambda v: v.status is not JobStatus.RUNNING, 30)
    assert v.status is JobStatus.PENDING, v.log_line()


@s_clause("S-7", "scancel by someone else is cancelled", SlurmFault.FOREIGN_SCANCEL)
async def s7(h: Harness) -> None:
    job, sid = await h.submit(["sleep", "300"])
    assert _running(await h.until(job, _running, 30))
    h.fault(SlurmFault.FOREIGN_SCANCEL, sid=sid).restore()
    v = await h.until(job, lambda v: v.status.final, 30)
    assert v.status is JobStatus.CANCELLED, v.log_line()


@s_clause("S-8", "a node set DOWN under a running job: pending again (requeued), never final",
          SlurmFault.NODE_DOWN)
async def s8(h: Harness) -> None:
    if len(h.cluster.layout.nodes) < 2:
        raise NotApplicable("one node: its job would have nowhere to go")
    job, sid = await h.submit(["sleep", "300"])
    assert _running(await h.until(job, _running, 30))
    inj = h.fault(SlurmFault.NODE_DOWN, sid=sid)
    try:
        v = await h.until(job, lambda v: v.status is not JobStatus.RUNNING, 30)
        assert v.status is JobStatus.PENDING, v.log_line()
    finally:
        inj.restore()


@s_clause("S-9", "the wrapper SIGKILLed in the allocation: failed by KILL per the scheduler, never completed",
          SlurmFault.SIGKILL_WRAPPER)
async def s9(h: Harness) -> None:
    job, sid = await h.submit(["sleep", "300"])
    assert _running(await h.until(job, _running, 30))
    h.fault(SlurmFault.SIGKILL_WRAPPER, sid=sid, job_id=job).restore()
    v = await h.until(job, lambda v: v.status.final or v.status is JobStatus.LOST, 40)
    assert v.status in (JobStatus.FAILED, JobStatus.LOST), v.log_line()


@s_clause("S-10", "the login node unreachable: the last status kept, stale", SlurmFault.LOGIN_UNREACHABLE)
async def s10(h: Harness) -> None:
    job, _ = await h.submit(["sleep", "300"])
    assert _running(await h.until(job, _running, 30))
    inj = h.fault(SlurmFault.LOGIN_UNREACHABLE)
    try:
        await h.t.close()
        v = await h.verdict(job, grace=0)
        assert (v.status, v.stale) == (JobStatus.RUNNING, True), v.log_line()
    finally:
        inj.restore()


# --- broken backends (the teeth) --------------------------------------------------------------
class AbsentIsCompleted(SlurmBackend):
    """Treats "not in the queue" as completed."""

    def merge(self, ev: Evidence, known: Known, *, grace: float) -> Verdict:
        s = ev.scheduler
        if ev.host.reachable and s is not None and s.queue == "absent" and s.accounting != "ok":
            return Verdict(ev.job_id, JobStatus.COMPLETED, Source.SCHEDULER, "gone from the queue: done", exit_code=0)
        return super().merge(ev, known, grace=grace)


class TimeoutIsCompleted(SlurmBackend):
    """Maps TIMEOUT to completed."""

    def merge(self, ev: Evidence, known: Known, *, grace: float) -> Verdict:
        v = super().merge(ev, known, grace=grace)
        if v.status is JobStatus.TIMEOUT:
            return Verdict(v.job_id, JobStatus.COMPLETED, v.source, "ended (TIMEOUT)", exit_code=0)
        return v


#: broken backend -> the clause it must fail
BROKEN: dict[str, tuple[type[SlurmBackend], str]] = {
    "absent-is-completed": (AbsentIsCompleted, "S-2"),
    "timeout-is-completed": (TimeoutIsCompleted, "S-3"),
}


@dataclass
class SlurmTarget:
    name: str
    spec: Any
    cluster: Cluster
    results: list[Result] = field(default_factory=list)


async def run_clause(c: SClause, target: SlurmTarget, backend: Any | None = None,
                     timeout: float = 240) -> Result:
    start = time.monotonic()
    if c.needs_accounting and not target.cluster.layout.accounting:
        return Result(c.id, c.title, True, target.name, NA, 0.0, "this cluster has no accounting")
    h = Harness(target.spec, target.cluster, backend or SlurmBackend())
    try:
        outcome, msg = await _decide(c, h, timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            await h.close()
        raise
    try:
        await h.close()
    except Exception as exc:  # the lab failing to clean up is the suite's error, not the clause's
        if outcome == PASS:
            outcome, msg = ERROR, f"the suite could not clean up after the clause: {exc}"
    return Result(c.id, c.title, True, target.name, outcome, time.monotonic() - start, msg,
                  [] if outcome == PASS else h.notes[-10:])


async def _decide(c: SClause, h: Harness, timeout: float) -> tuple[str, str]:
    """The clause's outcome; as for the W- clauses, a FAIL is the clause's own sentence and
    anything the suite or the cluster broke is an error, never the backend's failure."""
    try:
        await asyncio.wait_for(c.check(h), timeout)
        return PASS, ""
    except NotApplicable as exc:
        return NA, str(exc)
    except SlurmFaultError as exc:
        return ERROR, f"the suite's fault could not be made or undone: {exc}"
    except AssertionError as exc:
        if str(exc):
            return FAIL, str(exc)
        h.notes.append(traceback.format_exc()[-2000:])
        return FAIL, f"{c.id} does not hold (the failed check is in the evidence)"
    except TimeoutError:
        return ERROR, f"the clause did not finish within {timeout:g} s"
    except TransportError as exc:
        h.notes.append(traceback.format_exc()[-2000:])
        return ERROR, f"the cluster's login node stopped answering during the clause: {exc.message}"
    except Exception:
        h.notes.append(traceback.format_exc()[-2000:])
        return ERROR, "the suite could not decide this clause (an internal error; its traceback is in the evidence)"


async def run_slurm_target(target: SlurmTarget, clause_ids: list[str] | None = None, backend: Any | None = None,
                           progress: Callable[[Result], None] | None = None) -> list[Result]:
    chosen = [c for c in S_CLAUSES if not clause_ids or c.id in clause_ids]
    out = []
    for c in chosen:
        r = await run_clause(c, target, backend)
        out.append(r)
        if progress:
            progress(r)
    return out
