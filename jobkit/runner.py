"""Submit and cancel jobs: the local store's side of it, whatever the host's backend.

Submit records the job locally (with a token of its own), then asks the host's backend to launch
it (:mod:`jobkit.backends`); what the launch proves decides what is recorded: launched, refused
(the id is someone else's: nothing recorded), failed (provably nothing started: ``failed``), or
unknown (``queued``: reconciliation will tell). Each step is idempotent for its submission (its
token): a step retried after its first attempt reached the host never starts the job twice.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from jobkit.backends import Backend, FenceOutcome, LaunchOutcome, LaunchRequest, LaunchState, TmuxBackend, backend_for
from jobkit.backends.tmux import list_sessions, tmux_new_session
from jobkit.errors import ConfigError, JobIdInUse, JobkitError, LaunchFailed, OutcomeUnknown, TransportError
from jobkit.ids import new_id, validate_id
from jobkit.sagas import Compensate, Recovery, Saga, SagaState, Step, StepState, walk_back
from jobkit.sagas import recover as sagas_recover
from jobkit.store import AsyncStore
from jobkit.transport import Transport

__all__ = ["SUBMIT_STEPS", "Submitted", "cancel", "list_sessions", "recover", "submit", "tmux_new_session"]

log_ = logging.getLogger("jobkit.runner")


@dataclass(frozen=True)
class Submitted:
    job_id: str
    host: str
    already: bool = False  # a retried submit found the job already launched by its first attempt


#: the steps of a submit, in order (each logged before it runs and after it ended)
SUBMIT_STEPS = ("record_local", "prepare", "register", "start")
#: a hook called at every boundary of a submit's saga (the crash tests kill the process there):
#: "saga-begun", "before:STEP", "begun:STEP", "acted:STEP", "after:STEP", "saga-end"; and, when a
#: step fails and the saga is walked back at once, "compensating", "undone:STEP", "compensated:STEP"
Checkpoint = Callable[[str], None]


async def submit(transport: Transport, store: AsyncStore, host: str, argv: list[str], *,
                 job_id: str | None = None, base_dir: str | None = None,
                 env: dict[str, str] | None = None, timeout: float = 10.0, cwd: str | None = None,
                 name: str | None = None, backend: Backend | None = None,
                 checkpoint: Checkpoint | None = None, resources: dict[str, str] | None = None) -> Submitted:
    """Record the job, then launch it on the host: a saga of four logged steps (record locally,
    prepare the host, register the job there, start it), each idempotent for this submission.

    Raises :class:`JobIdInUse` when the id is already used on the host (nothing is recorded),
    :class:`LaunchFailed` when the launch provably started nothing (the job is recorded
    ``failed``; the host is left with nothing of it), and :class:`OutcomeUnknown` when the answer
    was lost after a command was sent (a timeout, a dropped connection): the job may be running,
    so it stays ``queued`` and its saga unresolved; reconciliation (and the next recovery, after
    the grace period) decides. A process killed in the middle leaves an unresolved saga that
    :func:`recover` resolves: a complete job, or nothing.

    Without ``backend``, the host's registered scheduler's (:func:`jobkit.backends.backend_for`);
    a host registered with a default partition gives it to a job whose ``resources`` name none.
    """
    spec = await store.call(store.sync.host, host)
    backend = backend or backend_for(spec.scheduler)
    if spec.partition and "partition" not in (resources or {}):
        resources = {**(resources or {}), "partition": spec.partition}
    cp = checkpoint or (lambda _point: None)
    job_id = validate_id(job_id) if job_id is not None else new_id()
    token = secrets.token_hex(8)
    req = LaunchRequest(job_id, argv, base_dir, token, dict(env or {}), cwd, name, dict(resources or {}))
    log = store.sync.sagas
    sid = await store.call(log.begin, "submit", {
        "job_id": job_id, "host": host, "argv": argv, "base_dir": base_dir, "token": token, "env": req.env,
        "cwd": cwd, "name": name, "scheduler": backend.name, "resources": req.resources})
    cp("saga-begun")

    async def step(idx: int, what: str, asked: Mapping[str, object],
                   act: Callable[[], Awaitable[LaunchOutcome | None]]) -> LaunchOutcome | None:
        cp(f"before:{what}")
        await store.call(log.step_begin, sid, idx, what, asked)
        cp(f"begun:{what}")
        try:
            outcome = await act()
        except TransportError as exc:
            if exc.sent and what == "start":  # it may have started: the step stays running, the saga unresolved
                log_.warning("%s: submit on %s: outcome unknown (%s); left queued", job_id, host, exc.message)
                raise OutcomeUnknown(
                    f"submit of {job_id} on {host}: {exc.message}; the job may or may not have started: it stays "
                    "queued and reconciliation will tell", job_id=job_id, host=host) from exc
            # before the start nothing can have started; a step that may have acted stays running
            # so that walking back undoes it too
            await _fail(idx, f"{what}: {exc.message}", ended=not exc.sent)
            raise LaunchFailed(f"{job_id} could not be started on {host}: {what}: {exc.message}", host=host) from exc
        except JobkitError as exc:
            await _fail(idx, f"{what}: {exc}")
            raise
        cp(f"acted:{what}")
        if outcome is not None and outcome.state is LaunchState.UNKNOWN:
            raise OutcomeUnknown(f"submit of {job_id} on {host}: {outcome.detail}; the job may or may not have "
                                 "started: it stays queued and reconciliation will tell", job_id=job_id, host=host)
        if outcome is not None and outcome.state in (LaunchState.FAILED, LaunchState.ID_USED):
            prefix = "id used: " if outcome.state is LaunchState.ID_USED else ""
            await _fail(idx, f"{prefix}{what}: {outcome.detail}")
            if outcome.state is LaunchState.ID_USED:
                raise JobIdInUse(f"job id {job_id} already used on {host}: nothing recorded", host=host)
            raise LaunchFailed(f"{job_id} could not be started on {host}: {outcome.detail}", host=host)
        await store.call(lambda: log.step_end(sid, idx, StepState.SUCCEEDED,
                                              output={"state": outcome.state.value} if outcome else None))
        cp(f"after:{what}")
        return outcome

    async def _fail(idx: int, why: str, *, ended: bool = True) -> None:
        if ended:
            await store.call(lambda: log.step_end(sid, idx, StepState.FAILED, error=why))
        await store.call(log.move, sid, SagaState.FAILED, why)
        saga = await store.call(log.get, sid)
        await walk_back(log, saga, _submit_compensations(store, lambda _h: transport, lambda _s: backend), cp)

    async def record() -> None:
        await store.call(store.sync.add_job, job_id, host, argv, None, token, name, cwd)

    # what each step is asked to do, recorded with it (`jobkit sagas --json` shows it)
    where = {"host": host, "job_id": job_id, "base_dir": base_dir}
    asked_start: dict[str, object] = {**where, "argv": argv, "env": req.env, "cwd": cwd}
    if req.resources:
        asked_start["resources"] = req.resources
    try:
        await step(0, "record_local", {"host": host, "job_id": job_id, "argv": argv, "name": name, "cwd": cwd},
                   record)
        await step(1, "prepare", {**where, "cwd": cwd}, lambda: backend.prepare(transport, req, timeout=timeout))
        await step(2, "register", where, lambda: backend.register(transport, req, timeout=timeout))
        started = await step(3, "start", asked_start, lambda: backend.start(transport, req, timeout=timeout))
        if started is not None and started.scheduler_id:
            await store.call(store.sync.set_scheduler_id, job_id, started.scheduler_id)
        await store.call(log.move, sid, SagaState.COMPLETED)
        cp("saga-end")
    finally:
        log.release(sid)
    log_.info("%s: submitted on %s: %s", job_id, host, argv)
    return Submitted(job_id, host, already=started is not None and started.state is LaunchState.ALREADY)


def _request(saga: Saga) -> LaunchRequest:
    i = saga.input
    return LaunchRequest(i["job_id"], list(i["argv"]), i.get("base_dir"), i.get("token"), dict(i.get("env") or {}),
                         i.get("cwd"), i.get("name"), dict(i.get("resources") or {}))


TransportFor = Callable[[str], Transport]
BackendFor = Callable[[Saga], Backend]


def _submit_compensations(store: AsyncStore, transport_for: TransportFor,
                          backend_of: BackendFor) -> dict[tuple[str, str], Compensate]:
    """How each step of a submit is undone, newest first: ``start`` by fencing the id (then the
    job can never start; a wrapper that claimed it first means it did start, which cannot be
    undone), ``register`` by removing this submission's queued row, ``record_local`` by
    forgetting the job (its id was someone else's) or recording that it never started."""

    async def unstart(saga: Saga, step: Step) -> None:
        req = _request(saga)
        fenced = await backend_of(saga).fence(transport_for(saga.input["host"]), req.job_id, req.base_dir,
                                              timeout=10)
        if fenced is not FenceOutcome.FENCED:
            raise JobkitError(f"{req.job_id} did start on {saga.input['host']}: it cannot be undone")

    async def unregister(saga: Saga, step: Step) -> None:
        await backend_of(saga).unregister(transport_for(saga.input["host"]), _request(saga), timeout=10)

    async def unrecord(saga: Saga, step: Step) -> None:
        job_id, token = saga.input["job_id"], saga.input["token"]
        if (saga.failure or "").startswith("id used: "):
            await store.call(store.sync.forget_unlaunched, job_id, token)
            return
        why = saga.failure or f"its submit was interrupted (saga {saga.id})"
        with contextlib.suppress(ConfigError):  # the row may never have been written
            await store.call(store.sync.mark_failed_launch, job_id, f"never started: {why}")

    return {("submit", "start"): unstart, ("submit", "register"): unregister, ("submit", "record_local"): unrecord}


async def recover(store: AsyncStore, transport_for: TransportFor, *, grace: float = 30.0) -> Recovery:
    """Resolve the sagas a dead process left unresolved (run at every start of a runner).

    A submit whose ``start`` step had begun is checked on its host first: the id is fenced, so
    either the job had started (a wrapper claimed the id: the saga completed — a complete job)
    or it never will (the saga is walked back — nothing is left of it). A saga younger than
    ``grace`` seconds is left for later: a launch may still be on its way."""
    log = store.sync.sagas

    def backend_of(saga: Saga) -> Backend:
        return backend_for(saga.input.get("scheduler"))

    async def submit_completed(saga: Saga) -> bool | None:
        begun = {s.name for s in saga.steps}
        if "start" not in begun:
            return False
        if time.time() - saga.started_at < grace:
            return None
        req = _request(saga)
        fenced = await backend_of(saga).fence(transport_for(saga.input["host"]), req.job_id, req.base_dir,
                                              timeout=10)
        return fenced is FenceOutcome.STARTED

    async def cancel_completed(saga: Saga) -> bool:
        i = saga.input
        with contextlib.suppress(JobkitError):  # not found / already final: nothing left to stop
            await backend_of(saga).cancel(transport_for(i["host"]), i["job_id"], i.get("base_dir"), timeout=10)
        return True

    return await sagas_recover(log, _submit_compensations(store, transport_for, backend_of),
                               {"submit": submit_completed, "cancel": cancel_completed})


async def cancel(transport: Transport, job_id: str, base_dir: str | None = None, timeout: float = 5.0, *,
                 backend: Backend | None = None, store: AsyncStore | None = None) -> str:
    """Ask the job to stop (tmux: TERM to its wrapper, which forwards it to the job's group).
    With a store, the cancel is a saga of one logged step: a runner killed before it knew the
    outcome re-issues it at its next start (a cancel can be repeated, never undone). Without
    ``backend``, the job's host's registered scheduler's (with a store; tmux without one)."""
    if store is None:
        return await (backend or TmuxBackend()).cancel(transport, job_id, base_dir, timeout=timeout)
    log = store.sync.sagas
    host = store.sync.job(job_id).host
    if backend is None:
        backend = backend_for(store.sync.host(host).scheduler)
    sid = await store.call(log.begin, "cancel", {"job_id": job_id, "host": host, "base_dir": base_dir,
                                                 "scheduler": backend.name})
    try:
        await store.call(log.step_begin, sid, 0, "signal", {"host": host, "job_id": job_id, "base_dir": base_dir})
        try:
            what = await backend.cancel(transport, job_id, base_dir, timeout=timeout)
        except TransportError as exc:
            if exc.sent:
                raise  # unknown: the next recovery re-issues it
            why = exc.message
            await store.call(lambda: log.step_end(sid, 0, StepState.FAILED, error=why))
            await store.call(log.move, sid, SagaState.FAILED, why)
            await walk_back(log, await store.call(log.get, sid), {})
            raise
        except JobkitError as exc:
            why = str(exc)
            await store.call(lambda: log.step_end(sid, 0, StepState.FAILED, error=why))
            await store.call(log.move, sid, SagaState.FAILED, why)
            await walk_back(log, await store.call(log.get, sid), {})
            raise
        await store.call(lambda: log.step_end(sid, 0, StepState.SUCCEEDED, output={"did": what}))
        await store.call(log.move, sid, SagaState.COMPLETED)
        return what
    finally:
        log.release(sid)
