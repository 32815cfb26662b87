"""One error tree for everything jobkit raises.

asyncssh, OSError, sqlite3 and timeout errors are translated into these at their boundary;
each carries what a person needs to act on it: the host, the command, the exit status and the
captured output.

    JobkitError
     ├── InvalidJobId                 an id that breaks the rule (before any side effect)
     ├── ConfigError                  bad user input or configuration
     │    └── JobIdInUse              the id is already used on the host: nothing was recorded
     ├── StoreError                   the local store cannot be used
     ├── PrerequisiteMissing          a tool the host needs is missing
     ├── RemoteCommandFailed          the command ran and exited non-zero
     │    ├── LaunchFailed            a submit that provably started nothing
     │    └── SchedulerUnreachable    the host answered, its batch scheduler's controller did
     │                                 not: nothing was done
     ├── OutcomeUnknown               the remote side may or may not have acted (a timeout
     │                                 or a connection lost after the command was sent)
     └── TransportError               could not run a command on a host
          ├── HostUnreachable         nothing reached the host (refused, DNS, auth, key)
          │    └── ConnectionLost     the connection dropped after the command was sent
          └── RemoteTimeout           no answer within the call's bound

``TransportError.sent`` says whether the command reached the host: when it did, a failure
says nothing about whether the command acted (see :class:`OutcomeUnknown`).
"""

from __future__ import annotations


class JobkitError(Exception):
    """Base of every error jobkit raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        command: str | None = None,
        exit_status: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.host = host
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr

    def __str__(self) -> str:
        parts = [self.message]
        if self.host and f"on {self.host}" not in self.message:
            parts.append(f"host={self.host}")
        if self.exit_status is not None:
            parts.append(f"exit={self.exit_status}")
        if self.stderr.strip():
            tail = self.stderr.strip().splitlines()[-1]
            parts.append(f"stderr={tail[:200]!r}")
        return " ".join(parts)


class InvalidJobId(JobkitError):
    """A job id that does not match ``^[A-Za-z0-9_-]{1,64}$``."""


class ConfigError(JobkitError):
    """Bad user input or configuration (unknown host, bad option)."""


class JobIdInUse(ConfigError):
    """The job id is already used on the host (by another store or an earlier run)."""


class TransportError(JobkitError):
    """Could not run a command on a host at all. ``sent``: the command reached the host, so
    it may have acted."""

    sent: bool = False

    def __init__(self, message: str, *, sent: bool | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        if sent is not None:
            self.sent = sent


class HostUnreachable(TransportError):
    """Connection refused, no route, DNS failure, authentication or key failure: the command
    never reached the host."""


class ConnectionLost(HostUnreachable):
    """The connection (or the channel) closed before the command's exit status arrived."""

    sent = True


class RemoteTimeout(TransportError):
    """The host did not answer within the call's timeout."""

    sent = True


class RemoteCommandFailed(JobkitError):
    """The command ran and exited non-zero where success was required."""


class LaunchFailed(RemoteCommandFailed):
    """A submit whose launch provably started nothing (the job is recorded failed)."""


class SchedulerUnreachable(RemoteCommandFailed):
    """The host answered and its batch scheduler's controller did not (SLURM: "Unable to contact
    slurm controller"): the request never reached the controller, so nothing was done."""


class OutcomeUnknown(JobkitError):
    """The remote side may or may not have acted: nobody can know yet. ``job_id`` names the
    job left as it was (a submit stays ``queued`` and reconciliation decides)."""

    def __init__(self, message: str, *, job_id: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.job_id = job_id


class PrerequisiteMissing(JobkitError):
    """A tool the host must have (tmux, sqlite3, ...) is missing."""


class StoreError(JobkitError):
    """The local store cannot be used (newer schema, corrupt file, unusable path)."""
