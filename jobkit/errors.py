"""One error tree for everything jobkit raises.

asyncssh, OSError and timeout errors are translated into these at the transport boundary;
each carries what a person needs to act on it: the host, the command, the exit status and the
captured output.
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
        if self.host:
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


class TransportError(JobkitError):
    """Could not run a command on a host at all."""


class HostUnreachable(TransportError):
    """Connection refused, no route, DNS failure, authentication failure, connection lost."""


class RemoteTimeout(TransportError):
    """The host did not answer within the call's timeout."""


class RemoteCommandFailed(JobkitError):
    """The command ran and exited non-zero where success was required."""


class PrerequisiteMissing(JobkitError):
    """A tool the host must have (tmux, sqlite3, ...) is missing."""


class StoreError(JobkitError):
    """The local store cannot be used (newer schema, corrupt file)."""
