"""A :class:`jobkit.transport.Transport` running commands on this machine with ``/bin/sh -c``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from jobkit.errors import RemoteCommandFailed, RemoteTimeout
from jobkit.transport import DEFAULT_TIMEOUT, CommandResult


class LocalTransport:
    """Same contract as the SSH transport, no network: handy for tests and the local host."""

    def __init__(self, name: str = "localhost", env: dict[str, str] | None = None) -> None:
        self._name = name
        self._env = env

    @property
    def host_name(self) -> str:
        return self._name

    async def run(
        self,
        command: str,
        *,
        stdin: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = False,
    ) -> CommandResult:
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self._env, start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), timeout
            )
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise RemoteTimeout(f"no answer within {timeout:g}s", host=self._name,
                                command=command) from exc
        rc = proc.returncode if proc.returncode is not None else 255
        result = CommandResult(command, rc if rc >= 0 else 128 - rc, out.decode("utf-8", "replace"),
                               err.decode("utf-8", "replace"), time.monotonic() - start)
        if check and result.exit_status != 0:
            raise RemoteCommandFailed("command failed", host=self._name, command=command,
                                      exit_status=result.exit_status, stdout=result.stdout,
                                      stderr=result.stderr)
        return result

    async def close(self) -> None:
        return None
