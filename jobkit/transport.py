"""The transport interface: run a command (with stdin) on a host, bounded by a timeout.

Implementations translate every library error into :mod:`jobkit.errors`; callers never see an
asyncssh, OSError or asyncio.TimeoutError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str
    elapsed: float


@runtime_checkable
class Transport(Protocol):
    """Runs shell command lines on one host."""

    @property
    def host_name(self) -> str: ...

    async def run(
        self,
        command: str,
        *,
        stdin: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = False,
    ) -> CommandResult:
        """Run ``command`` with the host's ``/bin/sh``; raise RemoteTimeout after ``timeout``
        seconds, HostUnreachable when the host cannot be reached, and RemoteCommandFailed on a
        non-zero exit when ``check`` is true."""
        ...

    async def close(self) -> None: ...
