"""What the reconciliation chain knows about a job: evidence in, verdict out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """A job's status. ``completed`` and ``failed`` are final and never change once recorded;
    ``lost`` means the outcome is not known (the state is lost, or the job ended where nothing
    could record its exit status): it is re-examined at every reconciliation and moves to a
    final status as soon as a record of the end appears.

    A batch scheduler adds what its users need to see: ``pending`` (the scheduler holds the job
    in its queue: not started yet, or requeued after it ran: the one status a running job may go
    back to) and the final statuses of the scheduler's own ends (``cancelled``, ``timeout``,
    ``node_fail``, ``preempted``, ``out_of_memory``, ``boot_fail``, ``deadline``). The tmux
    backend never produces them, and ``completed``/``failed`` mean what they always meant."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    LOST = "lost"
    PENDING = "pending"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    NODE_FAIL = "node_fail"
    PREEMPTED = "preempted"
    OUT_OF_MEMORY = "out_of_memory"
    BOOT_FAIL = "boot_fail"
    DEADLINE = "deadline"

    @property
    def final(self) -> bool:
        return self.value in FINAL_STATUSES

    @property
    def rank(self) -> int:
        """Progress order: queued = pending < running < lost < every final (never backwards,
        except a requeued batch job: running -> pending)."""
        return 3 if self.final else {"queued": 0, "pending": 0, "running": 1, "lost": 2}[self.value]


#: the final statuses: once recorded, never changed (the store's trigger enforces the same list)
FINAL_STATUSES = ("completed", "failed", "cancelled", "timeout", "node_fail", "preempted", "out_of_memory",
                  "boot_fail", "deadline")


class Source(StrEnum):
    DATABASE = "database"
    STATE_FILE = "state_file"
    LIVENESS = "liveness"
    NONE = "none"
    SCHEDULER = "scheduler"  # a batch scheduler's queue (squeue)
    ACCOUNTING = "accounting"  # a batch scheduler's accounting (sacct, or its job completion log)


@dataclass(frozen=True)
class DbEvidence:
    """The job's row in server.db. ``state``: ok | no_row | missing | locked | corrupt |
    wrong_schema | no_sqlite3 | error (the whole database, as the probe found it)."""

    state: str
    status: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    started_epoch: int | None = None
    completed_epoch: int | None = None
    boot_id: str | None = None
    pid: int | None = None
    token: str | None = None  # the submission that inserted the row (jobkit's runner sets it)


@dataclass(frozen=True)
class Claim:
    """The id's claim on the host (``<id>.wrapper.log``, created with O_EXCL). ``state``:
    ``absent`` (nobody claimed it), ``wrapper`` (a wrapper did: the job was started),
    ``fenced`` (the reconciler claimed it so that it can never start), ``other`` (unreadable)."""

    state: str
    pid: int | None = None  # the wrapper that claimed it
    alive: bool | None = None  # is that wrapper still running


@dataclass(frozen=True)
class FileEvidence:
    """The state file. ``state``: ok | missing | invalid (not JSON, or wrong fields)."""

    state: str
    status: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    pid: int | None = None
    wrapper_pid: int | None = None
    proc_start: int | None = None
    boot_id: str | None = None
    started_epoch: int | None = None
    completed_epoch: int | None = None
    db: str | None = None
    raw: str | None = None
    wrapper_start: int | None = None  # the wrapper's /proc start time (tells it from a reused pid)


@dataclass(frozen=True)
class Liveness:
    """Processes on the host. ``job_alive``: the pid exists and its /proc start time equals the
    recorded proc_start (None when there was nothing to check)."""

    job_alive: bool | None = None
    wrapper_alive: bool | None = None
    tmux_session: bool | None = None


@dataclass(frozen=True)
class SchedulerEvidence:
    """What a batch scheduler says of the job, as its commands answered (raw states: the backend
    maps them). ``queue``: listed | absent (the queue answered without it) | error (no answer:
    ``detail`` says why). ``accounting``: ok | absent (no record yet: lagging, or purged) |
    disabled | error. ``unparsable``: lines of either answer that could not be read (never a
    state: no information, reported)."""

    queue: str
    queue_state: str | None = None
    queue_reason: str | None = None
    accounting: str = "absent"
    acct_state: str | None = None
    acct_exit: int | None = None
    acct_signal: int | None = None
    scheduler_id: str | None = None
    detail: str = ""
    unparsable: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostState:
    reachable: bool
    error: str | None = None
    boot_id: str | None = None
    now_epoch: float | None = None


@dataclass(frozen=True)
class Known:
    """What the local store knew before this reconciliation."""

    status: JobStatus
    exit_code: int | None = None
    submitted_epoch: float | None = None
    last_alive_epoch: float | None = None  # host clock
    boot_id: str | None = None
    token: str | None = None  # this submission's token
    started_epoch: float | None = None  # host clock
    wrapper_gone_epoch: float | None = None  # host clock: the job was seen alive, its wrapper gone


@dataclass(frozen=True)
class Evidence:
    job_id: str
    host: HostState
    db: DbEvidence | None = None
    file: FileEvidence | None = None
    live: Liveness = field(default_factory=Liveness)
    claim: Claim | None = None
    scheduler: SchedulerEvidence | None = None  # a batch scheduler's view (None: a tmux host)

    def nothing_on_host(self) -> bool:
        """The host answered and holds nothing of the job: its database says there is no row,
        no state file, no claim, no tmux session, no live process."""
        return (self.host.reachable and self.db is not None and self.db.state == "no_row"
                and self.file is not None and self.file.state == "missing"
                and self.claim is not None and self.claim.state == "absent"
                and not self.live.job_alive and not self.live.wrapper_alive and not self.live.tmux_session)


@dataclass(frozen=True)
class Verdict:
    job_id: str
    status: JobStatus
    source: Source
    reason: str
    stale: bool = False
    conflict: bool = False
    exit_code: int | None = None
    signal: str | None = None
    said: dict[str, str] = field(default_factory=dict)  # what each source said
    alive: bool = False
    wrapper_gone: bool = False  # the job is alive and its wrapper is not

    def log_line(self) -> str:
        said = " ".join(f"{k}={v}" for k, v in self.said.items())
        flags = "".join([" STALE" if self.stale else "", " CONFLICT" if self.conflict else ""])
        return f"{self.job_id}: {self.status.value} (decided by {self.source.value}{flags}) [{said}] {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.job_id, "status": self.status.value, "source": self.source.value,
                "reason": self.reason, "stale": self.stale, "conflict": self.conflict,
                "exit_code": self.exit_code, "signal": self.signal, "said": dict(self.said)}
