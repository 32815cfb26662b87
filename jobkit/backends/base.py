"""The backend interface: how jobs are started, cancelled and looked at on one kind of host.

Everything above a backend (the store, the saga log, reconciliation, the service, the CLI, the
conformance suite) works through this interface, whatever the scheduler: ``tmux`` (a detached
tmux session per job on an SSH host) or a batch scheduler. A backend never touches the local
store; it only talks to the host through its :class:`~jobkit.transport.Transport`, and it must
never guess: a launch whose outcome it cannot prove is ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from jobkit.models import Evidence, Known, Verdict
from jobkit.probe import JobQuery, ProbeResult
from jobkit.transport import Transport


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a backend needs to start one job."""

    job_id: str
    argv: list[str]
    base_dir: str | None = None
    token: str | None = None  # the submission's token, recorded with the host's row
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None  # the job's working directory on the host (default: the user's home)
    name: str | None = None
    resources: dict[str, str] = field(default_factory=dict)  # scheduler resources (time, cpus, mem, partition)


class LaunchState(StrEnum):
    LAUNCHED = "launched"  # started now
    ALREADY = "already"  # this very submission had started it before (a retried launch)
    ID_USED = "id_used"  # the id belongs to someone else on the host: nothing was done
    FAILED = "failed"  # provably nothing started (and nothing ever will: the id is fenced)
    UNKNOWN = "unknown"  # it may or may not have started


@dataclass(frozen=True)
class LaunchOutcome:
    state: LaunchState
    detail: str = ""
    scheduler_id: str | None = None  # the scheduler's own id for the job, when it has one


class FenceOutcome(StrEnum):
    FENCED = "fenced"  # the id is claimed on the host: the job never started and never will
    STARTED = "started"  # the job's wrapper claimed it first: the job did start


class Backend(Protocol):
    """One kind of host. Implementations: :class:`jobkit.backends.tmux.TmuxBackend`.

    A submit is a saga of steps (:mod:`jobkit.sagas`): ``prepare`` (the host can take the job),
    ``register`` (the host's record of the job, with the submission's token), ``start``; each is
    idempotent for one submission (a retried step never does its work twice) and never raises
    for an outcome it can state (transport errors propagate, carrying whether the command was
    sent). ``fence`` and ``unregister`` undo a launch that never happened: after ``fence`` says
    FENCED, the job can never start on that host; ``unregister`` then removes the record
    ``register`` made (only a record of this submission that is still queued)."""

    @property
    def name(self) -> str: ...

    async def prepare(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> LaunchOutcome:
        """LAUNCHED (ready) or FAILED (the host cannot take the job: nothing was done)."""
        ...

    async def register(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> LaunchOutcome:
        """LAUNCHED (recorded), ALREADY (this submission had recorded it), ID_USED, FAILED."""
        ...

    async def start(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> LaunchOutcome:
        """LAUNCHED, ALREADY (this submission had started it), FAILED (provably not started,
        and fenced), UNKNOWN."""
        ...

    async def fence(self, transport: Transport, job_id: str, base_dir: str | None, *,
                    timeout: float) -> FenceOutcome:
        """Make sure the job can never start, or learn that it did."""
        ...

    async def unregister(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> None:
        """Remove ``register``'s record (this submission's, still queued); idempotent."""
        ...

    async def cancel(self, transport: Transport, job_id: str, base_dir: str | None, *, timeout: float) -> str:
        """Ask the job to stop; returns what was done."""
        ...

    async def probe(self, transport: Transport, queries: list[JobQuery], base_dir: str | None, *,
                    timeout: float) -> ProbeResult:
        """Evidence for every job asked about in one round trip; an unreachable host is
        ``host.reachable == False``, never an exception."""
        ...

    def merge(self, ev: Evidence, known: Known, *, grace: float) -> Verdict:
        """The verdict the evidence supports (pure)."""
        ...
