"""The asyncssh implementation of :class:`jobkit.transport.Transport`.

One connection per host, reused; reconnected with exponential backoff when it drops; at most
``max_sessions`` channels at once (OpenSSH's default ``MaxSessions`` is 10 per connection); the
server's host key pinned from :attr:`HostSpec.known_host_key`; every library error translated
into :mod:`jobkit.errors`.

Every call returns within its timeout plus a few milliseconds, whatever the peer does: when the
bound fires the channel is closed without waiting for the peer to agree. A background task
waits (bounded) for the channel to close and only then gives its session slot back; a peer that
does not close it in time is stalled, and the connection is aborted so that the next call
reconnects. :meth:`close` is bounded the same way.
"""

from __future__ import annotations

import asyncio
import time

import asyncssh

from jobkit.errors import (
    ConnectionLost,
    HostUnreachable,
    RemoteCommandFailed,
    RemoteTimeout,
    TransportError,
)
from jobkit.hosts import HostSpec
from jobkit.transport import DEFAULT_TIMEOUT, CommandResult

#: How long an abandoned channel may take to close before its connection is aborted, and how
#: long close() waits for the connection to close politely.
CLOSE_GRACE = 2.0


def known_hosts_for(spec: HostSpec) -> asyncssh.SSHKnownHosts:
    """A known-hosts object holding exactly the pinned key of ``spec``."""
    if not spec.known_host_key:
        raise HostUnreachable(
            "no pinned host key for this host: refusing to connect without host key checking",
            host=spec.name,
        )
    pattern = spec.address if spec.port == 22 else f"[{spec.address}]:{spec.port}"
    try:
        return asyncssh.import_known_hosts(f"{pattern} {spec.known_host_key.strip()}\n")
    except (ValueError, asyncssh.Error) as exc:
        raise HostUnreachable(f"the pinned host key is not a valid public key: {exc}", host=spec.name) from exc


class SSHTransport:
    """Runs commands on one host over one shared, pinned, key-authenticated SSH connection."""

    def __init__(
        self,
        spec: HostSpec,
        *,
        max_sessions: int = 8,
        connect_timeout: float = DEFAULT_TIMEOUT,
        max_backoff: float = 4.0,
        close_grace: float = CLOSE_GRACE,
    ) -> None:
        self.spec = spec
        self._sessions = asyncio.Semaphore(max_sessions)
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        self._close_grace = close_grace
        self._conn: asyncssh.SSHClientConnection | None = None
        self._key: asyncssh.SSHKey | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._next_attempt = 0.0
        self._reapers: set[asyncio.Task[None]] = set()
        self._dropped: set[asyncssh.SSHClientConnection] = set()  # closing: close() waits for them

    @property
    def host_name(self) -> str:
        return self.spec.name

    def _client_key(self) -> asyncssh.SSHKey:
        if self._key is None:
            path = self.spec.private_key
            try:
                self._key = asyncssh.read_private_key(str(path))
            except (OSError, ValueError, asyncssh.Error) as exc:
                why = str(exc) or type(exc).__name__
                if "assphrase" in why:
                    why = "it is passphrase-protected (use an unencrypted key)"
                raise HostUnreachable(f"cannot use the private key {path}: {why}", host=self.spec.name) from exc
        return self._key

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
            key, known = self._client_key(), known_hosts_for(self.spec)
            try:
                self._conn = await asyncio.wait_for(
                    asyncssh.connect(
                        self.spec.address,
                        self.spec.port,
                        username=self.spec.user,
                        client_keys=[key],
                        known_hosts=known,
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
                                    host=self.spec.name, sent=False) from exc
            except asyncssh.HostKeyNotVerifiable as exc:
                self._note_failure()
                raise HostUnreachable(
                    f"refusing to connect: the host key at {self.spec.address}:{self.spec.port} is not the one pinned "
                    f"for {self.spec.name} (it changed, or another machine answers there); if the change is expected, "
                    f"pin the new key with: jobkit hosts add {self.spec.name} ... --replace-host-key",
                    host=self.spec.name) from exc
            except (OSError, asyncssh.Error, ValueError) as exc:
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
        call = _Call()
        try:
            async with asyncio.timeout(timeout):
                await self._sessions.acquire()
                call.held = True
                process = await self._open(call, command, deadline)
                # always end stdin: a command that reads it (the probe's awk) must never wait
                # for an EOF that asyncssh only sends with non-empty input
                if stdin:
                    process.stdin.write(stdin)
                process.stdin.write_eof()
                raw_out, raw_err = await process.communicate()
                call.closed = True
                status = _exit_status(process.exit_status, process.exit_signal)
                out, err = _text(raw_out), _text(raw_err)
        except TimeoutError as exc:
            raise RemoteTimeout(f"no answer within {timeout:g}s", host=self.spec.name, command=command,
                                sent=call.sent) from exc
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as exc:
            self._drop(call.conn)
            if not call.sent:
                raise HostUnreachable(f"connection lost: {exc}", host=self.spec.name, command=command) from exc
            raise ConnectionLost(f"connection lost: {exc}", host=self.spec.name, command=command) from exc
        except asyncssh.ChannelOpenError as exc:
            raise HostUnreachable(f"the server refused a session: {exc}", host=self.spec.name,
                                  command=command) from exc
        except asyncssh.Error as exc:
            raise TransportError(f"SSH error: {exc}", host=self.spec.name, command=command,
                                 sent=call.sent) from exc
        finally:
            if call.held:
                self._release(call)
        if status is None:
            # the channel closed without an exit status: the session or the connection died
            self._drop(call.conn)
            raise ConnectionLost("connection lost before the command's exit status arrived",
                                 host=self.spec.name, command=command, stdout=out, stderr=err)
        result = CommandResult(command=command, exit_status=status, stdout=out, stderr=err,
                               elapsed=time.monotonic() - start)
        if check and result.exit_status != 0:
            raise RemoteCommandFailed(
                "command failed", host=self.spec.name, command=command,
                exit_status=result.exit_status, stdout=result.stdout, stderr=result.stderr,
            )
        return result

    async def _open(self, call: _Call, command: str, deadline: float) -> asyncssh.SSHClientProcess[str]:
        """A channel running ``command``; a refused channel open (the server's session limit)
        is retried until the deadline. The open runs as a task of its own that a timeout does
        not cancel: a channel the server opens after the caller gave up is still closed (by the
        reaper), never left open on the server, where it would count against MaxSessions."""
        delay = 0.02
        while True:
            call.conn = await self._connection(deadline)
            call.opening = asyncio.ensure_future(
                call.conn.create_process(command, encoding="utf-8", errors="replace"))
            try:
                call.process = await asyncio.shield(call.opening)
                return call.process
            except _LIBRARY_RACE as exc:
                raise _lost_while_opening(exc) from exc
            except asyncssh.ChannelOpenError:
                call.opening = None
                if time.monotonic() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _release(self, call: _Call) -> None:
        """Give the session slot back once the channel is closed; never make the caller wait."""
        if call.closed or (call.process is None and call.opening is None):
            self._sessions.release()
            return
        if call.process is not None:
            call.process.close()
        task = asyncio.get_running_loop().create_task(self._reap(call))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    async def _reap(self, call: _Call) -> None:
        try:
            async with asyncio.timeout(self._close_grace):
                process = call.process
                if process is None and call.opening is not None:
                    process = await call.opening  # the server may still open it: close it then
                    process.close()
                if process is not None:
                    await process.wait_closed()
        except asyncssh.ChannelOpenError:
            pass  # never opened: nothing to close
        except (TimeoutError, asyncssh.Error, OSError, asyncio.CancelledError, *_LIBRARY_RACE):
            # the peer did not close the channel: it is stalled (a paused host); abort the
            # connection so every channel on it is freed and the next call reconnects
            self._drop(call.conn, abort=True)
        finally:
            if call.opening is not None and not call.opening.done():
                call.opening.cancel()
            self._sessions.release()

    def _drop(self, conn: asyncssh.SSHClientConnection | None, *, abort: bool = False) -> None:
        if conn is None:
            return
        if self._conn is conn:
            self._conn = None
        self._dropped = {c for c in self._dropped if not c.is_closed()}
        self._dropped.add(conn)
        if abort:
            conn.abort()
        else:
            conn.close()

    async def close(self) -> None:
        """Close the connection; bounded: a stalled peer gets its connection aborted."""
        for task in list(self._reapers):
            task.cancel()
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)
        conns, self._dropped = {self._conn, *self._dropped} - {None}, set()
        self._conn = None
        await asyncio.gather(*(self._shut(c) for c in conns if c is not None))

    async def _shut(self, conn: asyncssh.SSHClientConnection) -> None:
        conn.close()
        try:
            await asyncio.wait_for(conn.wait_closed(), self._close_grace)
        except (TimeoutError, asyncssh.Error, OSError):
            conn.abort()
            # abort() closes the socket at once; let the loop run its callbacks
            await asyncio.sleep(0)


#: what asyncssh raises (seen with 2.24) when the connection closes between the server's confirmation of a
#: channel and the session's start: an assert on the channel's connection, or an attribute of the
#: session it already cleared. Both mean "connection lost while the channel opened".
_LIBRARY_RACE = (AssertionError, AttributeError)


def _lost_while_opening(exc: BaseException) -> asyncssh.ConnectionLost:
    return asyncssh.ConnectionLost(
        f"the connection closed while a channel opened (asyncssh: {type(exc).__name__})")


class _Call:
    """One run(): what it holds, so whatever way it ends the channel is accounted for."""

    def __init__(self) -> None:
        self.held = False  # a session slot is held
        self.closed = False  # the channel is fully closed
        self.conn: asyncssh.SSHClientConnection | None = None
        self.opening: asyncio.Future[asyncssh.SSHClientProcess[str]] | None = None
        self.process: asyncssh.SSHClientProcess[str] | None = None

    @property
    def sent(self) -> bool:
        """The command may have reached the host (its channel was asked for)."""
        return self.opening is not None or self.process is not None


def _exit_status(exit_status: int | None, exit_signal: tuple[str, bool, str, str] | None) -> int | None:
    """The shell's view of how the command ended, or None when the channel closed without
    saying (the session or the connection died)."""
    if exit_status is not None and exit_status >= 0:
        return exit_status
    if exit_signal:  # killed by a signal: report it the way a shell would (128 + n)
        names = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "SEGV": 11, "PIPE": 13, "TERM": 15}
        return 128 + names.get(str(exit_signal[0]), 0)
    return None


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data
