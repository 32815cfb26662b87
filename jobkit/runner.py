"""Submit and cancel jobs: the local store's side of it, whatever the host's backend.

Submit records the job locally (with a token of its own), then asks the host's backend to launch
it (:mod:`jobkit.backends`); what the launch proves decides what is recorded: launched, refused
(the id is someone else's: nothing recorded), failed (provably nothing started: ``failed``), or
unknown (``queued``: reconciliation will tell). A retried launch of the same submission never
starts the job twice.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from jobkit.backends import Backend, LaunchRequest, LaunchState, TmuxBackend
from jobkit.backends.tmux import cancel as _tmux_cancel
from jobkit.backends.tmux import launch_command, list_sessions, tmux_new_session
from jobkit.errors import JobIdInUse, LaunchFailed, OutcomeUnknown, TransportError
from jobkit.ids import new_id, validate_id
from jobkit.store import AsyncStore
from jobkit.transport import Transport

__all__ = ["Submitted", "cancel", "launch_command", "list_sessions", "submit", "tmux_new_session"]

log = logging.getLogger("jobkit.runner")


@dataclass(frozen=True)
class Submitted:
    job_id: str
    host: str
    already: bool = False  # a retried submit found the job already launched by its first attempt


async def submit(transport: Transport, store: AsyncStore, host: str, argv: list[str], *,
                 job_id: str | None = None, base_dir: str | None = None,
                 env: dict[str, str] | None = None, timeout: float = 10.0, cwd: str | None = None,
                 name: str | None = None, backend: Backend | None = None) -> Submitted:
    """Record the job, then launch it on the host.

    Raises :class:`JobIdInUse` when the id is already used on the host (nothing is recorded),
    :class:`LaunchFailed` when the launch provably started nothing (the job is recorded
    ``failed``), and :class:`OutcomeUnknown` when the answer was lost after the command was sent
    (a timeout, a dropped connection): the job may be running, so it stays ``queued`` and the
    reconciliation decides (after the grace period, a job with nothing on the host is fenced and
    recorded "never started").
    """
    backend = backend or TmuxBackend()
    job_id = validate_id(job_id) if job_id is not None else new_id()
    token = secrets.token_hex(8)
    await store.call(store.sync.add_job, job_id, host, argv, None, token, name, cwd)
    req = LaunchRequest(job_id, argv, base_dir, token, dict(env or {}), cwd, name)
    try:
        outcome = await backend.launch(transport, req, timeout=timeout)
    except TransportError as exc:
        if exc.sent:
            log.warning("%s: submit on %s: outcome unknown (%s); left queued", job_id, host, exc.message)
            raise OutcomeUnknown(
                f"submit of {job_id} on {host}: {exc.message}; the job may or may not have started: it stays "
                "queued and reconciliation will tell", job_id=job_id, host=host) from exc
        await store.call(store.sync.mark_failed_launch, job_id, str(exc))
        raise
    if outcome.state is LaunchState.ID_USED:
        await store.call(store.sync.forget_unlaunched, job_id, token)
        raise JobIdInUse(f"job id {job_id} already used on {host}: nothing recorded", host=host)
    if outcome.state is LaunchState.FAILED:
        await store.call(store.sync.mark_failed_launch, job_id, outcome.detail)
        raise LaunchFailed(f"{job_id} could not be started on {host}: {outcome.detail}", host=host)
    if outcome.state is LaunchState.UNKNOWN:
        raise OutcomeUnknown(f"submit of {job_id} on {host}: {outcome.detail}; the job may or may not have "
                             "started: it stays queued and reconciliation will tell", job_id=job_id, host=host)
    log.info("%s: submitted on %s: %s", job_id, host, argv)
    return Submitted(job_id, host)


async def cancel(transport: Transport, job_id: str, base_dir: str | None = None, timeout: float = 5.0, *,
                 backend: Backend | None = None) -> str:
    """Ask the job to stop (tmux: TERM to its wrapper, which forwards it to the job's group)."""
    if backend is None:
        return await _tmux_cancel(transport, job_id, base_dir, timeout)
    return await backend.cancel(transport, job_id, base_dir, timeout=timeout)
