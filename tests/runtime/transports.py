"""Transports whose start of the job's tmux session fails, every other command going through:
shared by the runtime tests and the crash tests' child runner (which imports no conftest)."""

from __future__ import annotations

from typing import ClassVar

from jobkit.errors import HostUnreachable, RemoteTimeout
from jobkit.transport import CommandResult
from jobkit.transport_ssh import SSHTransport


class FailingStart:
    """``sent``: the start reaches the host and acts, then its answer is lost (a time-out);
    else its connection fails before it is sent. Closing it leaves the real transport open."""

    sent: ClassVar[bool]

    def __init__(self, real: SSHTransport) -> None:
        self.real = real

    @property
    def host_name(self) -> str:
        return self.real.host_name

    async def run(self, command: str, **kw: object) -> CommandResult:
        if "new-session" not in command:
            return await self.real.run(command, **kw)  # type: ignore[arg-type]
        if not self.sent:
            raise HostUnreachable("connection refused", host=self.host_name, sent=False)
        await self.real.run(command, **kw)  # type: ignore[arg-type]
        raise RemoteTimeout("no answer within 1s", host=self.host_name, sent=True)

    async def close(self) -> None:
        return None


class AnswerLostAfterStart(FailingStart):
    """The host acts on the launch, then its answer is lost (the client's bound fires first)."""

    sent = True


class StartNeverSent(FailingStart):
    """Every command reaches the host but the start's: its connection fails before it is sent."""

    sent = False
