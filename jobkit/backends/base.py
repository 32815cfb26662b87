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


class Backend(Protocol):
    """One kind of host. Implementations: :class:`jobkit.backends.tmux.TmuxBackend`."""

    @property
    def name(self) -> str: ...

    async def launch(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> LaunchOutcome:
        """Start the job; never raises for an outcome it can state (transport errors propagate,
        carrying whether the command was sent)."""
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
