"""The asyncssh implementation of :class:`jobkit.transport.Transport`.

One connection per host, reused; reconnected with exponential backoff when it drops; at most
``max_sessions`` channels at once (OpenSSH's default ``MaxSessions`` is 10 per connection); the
server's host key pinned from :attr:`HostSpec.known_host_key`; every call bounded by its
timeout; every library error translated into :mod:`jobkit.errors`.
"""

from __future__ import annotations

import asyncio
import time

import asyncssh

from jobkit.errors import HostUnreachable, RemoteCommandFailed, RemoteTimeout, TransportError
from jobkit.hosts import HostSpec
from jobkit.transport import DEFAULT_TIMEOUT, CommandResult


def known_hosts_for(spec: HostSpec) -> asyncssh.SSHKnownHosts:
    """A known-hosts object holding exactly the pinned key of ``spec``."""
    if not spec.known_host_key:
        raise HostUnreachable(
            "no pinned host key for this host: refusing to connect without host key checking",
            host=spec.name,
        )
    pattern = spec.address if spec.port == 22 else f"[{spec.address}]:{spec.port}"
    return asyncssh.import_known_hosts(f"{pattern} {spec.known_host_key.strip()}\n")


class SSHTransport:
    """Runs commands on one host over one shared, pinned, key-authenticated SSH connection."""

    def __init__(
        self,
        spec: HostSpec,
        *,
        max_sessions: int = 8,
        connect_timeout: float = DEFAULT_TIMEOUT,
        max_backoff: float = 4.0,
    ) -> None:
        self.spec = spec
        self._sessions = asyncio.Semaphore(max_sessions)
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._next_attempt = 0.0

    @property
    def host_name(self) -> str:
        return self.spec.name

    async def _connection(self, deadline: float) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._conn = None
            wait = self._next_attempt - time.monotonic()
            if wait > 0:  # backoff after failures, never past the caller's deadline
                if time.monotonic() + wait >= deadline:
                    raise HostUnreachable(
                        f"host unreachable (retrying in {wait:.1f}s after {self._failures} failures)",
                        host=self.spec.name,
                    )
                await asyncio.sleep(wait)
            timeout = max(0.1, min(self._connect_timeout, deadline - time.monotonic()))
            try:
                self._conn = await asyncio.wait_for(
                    asyncssh.connect(
                        self.spec.address,
                        self.spec.port,
                        username=self.spec.user,
                        client_keys=[str(self.spec.private_key)],
                        known_hosts=known_hosts_for(self.spec),
                        agent_path=None,
                        config=None,
                        keepalive_interval=15,
                        keepalive_count_max=3,
                    ),
                    timeout,
                )
            except TimeoutError as exc:
                self._note_failure()
                raise RemoteTimeout(f"SSH connection not established within {timeout:.1f}s",
                                    host=self.spec.name) from exc
            except (OSError, asyncssh.Error) as exc:
                self._note_failure()
                raise HostUnreachable(f"cannot connect: {exc}", host=self.spec.name) from exc
            self._failures = 0
            self._next_attempt = 0.0
            return self._conn

    def _note_failure(self) -> None:
        self._failures += 1
        delay = min(self._max_backoff, 0.25 * 2 ** (self._failures - 1))
        self._next_attempt = time.monotonic() + delay

    async def run(
        self,
        command: str,
        *,
        stdin: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = False,
    ) -> CommandResult:
        start = time.monotonic()
        deadline = start + timeout
        try:
            async with asyncio.timeout(timeout):
                async with self._sessions:
                    proc = await self._run_channel(command, stdin, deadline)
        except TimeoutError as exc:
            raise RemoteTimeout(f"no answer within {timeout:g}s", host=self.spec.name,
                                command=command) from exc
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as exc:
            await self._drop()
            raise HostUnreachable(f"connection lost: {exc}", host=self.spec.name,
                                  command=command) from exc
        except asyncssh.Error as exc:
            raise TransportError(f"SSH error: {exc}", host=self.spec.name, command=command) from exc
        status, out, err = proc
        result = CommandResult(command=command, exit_status=status, stdout=out, stderr=err,
                               elapsed=time.monotonic() - start)
        if check and result.exit_status != 0:
            raise RemoteCommandFailed(
                "command failed", host=self.spec.name, command=command,
                exit_status=result.exit_status, stdout=result.stdout, stderr=result.stderr,
            )
        return result

    async def _run_channel(self, command: str, stdin: str | None, deadline: float) -> tuple[int, str, str]:
        """One channel, held (and counted against MaxSessions) until it is fully closed; a
        refused channel open (the server's session limit) is retried until the deadline."""
        delay = 0.02
        while True:
            conn = await self._connection(deadline)
            try:
                process = await conn.create_process(command, encoding="utf-8", errors="replace")
                break
            except asyncssh.ChannelOpenError:
                if time.monotonic() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            out, err = await process.communicate(stdin)
            status = _exit_status(process.exit_status, process.exit_signal)
        finally:
            process.close()
            await process.wait_closed()
        return status, _text(out), _text(err)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()


def _exit_status(exit_status: int | None, exit_signal: tuple[str, bool, str, str] | None) -> int:
    if exit_status is not None and exit_status >= 0:
        return exit_status
    # killed by a signal: report it the way a shell would (128 + n)
    names = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "SEGV": 11, "PIPE": 13, "TERM": 15}
    signal = exit_signal[0] if exit_signal else None
    return 128 + names.get(str(signal), 0) if signal else 255


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data
