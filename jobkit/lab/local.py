"""The embedded ``local`` target: a real SSH server in this process, on 127.0.0.1.

asyncssh serves the SSH protocol (key exchange, pinned ed25519 host key, public-key auth with
the lab session's key only); each exec request runs with this machine's ``/bin/sh -c`` in its
own session, with stdin/stdout/stderr streamed and the real exit status (or signal) returned.
Several channels per connection are fine. A client cannot tell it from sshd, so the runtime and
the conformance suite use it exactly like a Docker target, on machines without Docker.

Commands run as the current user with ``HOME`` set to a private directory of the session, so
the wrapper's default ``~/.jobkit`` never touches the real home. When the target stops, the tmux
servers and processes started in that HOME are stopped; a target made without a ``workdir``
gets a private one under the cache dir (:func:`jobkit.lab.session.create_workdir`), removed then.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import asyncssh

from jobkit.hosts import HostSpec
from jobkit.lab.keys import ClientKey, HostKey, client_key, host_key
from jobkit.lab.session import create_workdir, remove_workdir, stop_processes

_SESSION_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM,
                    signal.SIGUSR1, signal.SIGUSR2)


def _restore(ignored: tuple[signal.Signals, ...]) -> None:
    for sig in ignored:
        signal.signal(sig, signal.SIG_DFL)


def _default_signals_preexec() -> Callable[[], None] | None:
    """Like sshd, start sessions with default signal dispositions.

    A server started under `nohup` (or by a CI runner that ignores HUP) would otherwise hand
    its ignored signals to every session, and a shell cannot trap a signal ignored on entry.
    Only then is a pre-exec hook used (SIGPIPE is restored by subprocess itself).
    """
    ignored = tuple(s for s in _SESSION_SIGNALS if signal.getsignal(s) is signal.SIG_IGN)
    return functools.partial(_restore, ignored) if ignored else None


_SIGNALS = {signal.Signals(n).name.removeprefix("SIG"): n for n in range(1, 32) if n in signal.valid_signals()}


class _Server(asyncssh.SSHServer):
    def __init__(self, target: LocalTarget) -> None:
        self._target = target

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._target._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._target._connections = {c for c in self._target._connections if not c.is_closed()}

    def begin_auth(self, username: str) -> bool:
        return True  # authentication required, by public key only

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self._target.user and key.export_public_key().decode().split()[:2] == \
            self._target.client.public.split()[:2]


class LocalTarget:
    """An in-process SSH server; use as ``async with LocalTarget() as t: t.spec`` or, from
    synchronous code, :meth:`start_in_thread` / :meth:`stop_in_thread`."""

    def __init__(self, workdir: Path | None = None, *, user: str | None = None,
                 base_dir: str | None = None, name: str = "local") -> None:
        self._own_tmp = workdir is None
        self.workdir = workdir or create_workdir("local")
        self.home = self.workdir / "home"
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self.client: ClientKey = client_key(self.workdir / "keys")
        except BaseException:
            if self._own_tmp:
                remove_workdir(self.workdir)
            raise
        self.user = user or _current_user()
        self.hostkey: HostKey = host_key()
        self.name = name
        self._base_dir = base_dir
        self._server: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._children: set[int] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._accepting = True
        self.delay = 0.0  # a "slow host": seconds every command waits before it starts
        self.delay_only: str | None = None  # ... or only the commands containing this text
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def spec(self) -> HostSpec:
        if not self.port:
            raise RuntimeError("the local target is not started")
        return HostSpec(
            name=self.name, address="127.0.0.1", port=self.port, user=self.user,
            private_key=self.client.path, known_host_key=self.hostkey.public,
            base_dir=self._base_dir, labels={"target": "local", "home": str(self.home)},
        )

    async def start(self) -> HostSpec:
        self._server = await asyncssh.create_server(
            lambda: _Server(self), "127.0.0.1", 0,
            server_host_keys=[self.hostkey.key],
            process_factory=self._handle,
            encoding=None,
            allow_scp=False,
            sftp_factory=None,
            keepalive_interval=0,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.spec

    async def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        command = process.command
        if command is None:  # interactive shell: not offered, like a forced-command server
            process.stderr.write(b"jobkit local target: exec requests only\n")
            process.exit(1)
            return
        text = command.decode("utf-8", "replace") if isinstance(command, bytes) else str(command)
        if self.delay and (self.delay_only is None or self.delay_only in text):
            await asyncio.sleep(self.delay)
        env = {
            "HOME": str(self.home), "USER": self.user, "LOGNAME": self.user, "SHELL": "/bin/sh",
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        for k, v in (process.env or {}).items():  # what sshd's AcceptEnv would pass
            key = k.decode() if isinstance(k, bytes) else str(k)
            if key.startswith("LC_") or key == "LANG":
                env[key] = v.decode() if isinstance(v, bytes) else str(v)
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, cwd=str(self.home), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
            preexec_fn=_default_signals_preexec(),
        )
        self._children.add(proc.pid)
        child_in, child_out, child_err = proc.stdin, proc.stdout, proc.stderr
        if child_in is None or child_out is None or child_err is None:  # pipes were asked for
            raise RuntimeError("subprocess pipes missing")

        async def pump_in() -> None:
            try:
                while True:
                    try:
                        data = await process.stdin.read(65536)
                    except asyncssh.SignalReceived as sig:  # the client's channel signal
                        with contextlib.suppress(ProcessLookupError, KeyError):
                            os.killpg(proc.pid, _SIGNALS[str(sig.signal)])
                        continue
                    except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged):
                        continue
                    if not data:
                        break
                    child_in.write(data)
                    await child_in.drain()
            except (BrokenPipeError, ConnectionResetError, asyncssh.Error):
                pass
            finally:
                with contextlib.suppress(OSError):
                    child_in.close()

        async def pump_out(src: asyncio.StreamReader, dst: asyncssh.SSHWriter[bytes]) -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, asyncssh.Error):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()

        feeder = asyncio.create_task(pump_in())
        try:
            await asyncio.gather(pump_out(child_out, process.stdout), pump_out(child_err, process.stderr))
            rc = await proc.wait()
        finally:
            feeder.cancel()
            self._children.discard(proc.pid)
            if proc.returncode is None:  # abandoned (client gone, server stopping): like a hangup
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(BaseException):
                    await asyncio.shield(proc.wait())
            transport = getattr(proc, "_transport", None)  # closes the pipes, even half-read
            if transport is not None:
                transport.close()
        if rc < 0:
            name = signal.Signals(-rc).name.removeprefix("SIG")
            process.exit_with_signal(name, False, "", "")
        else:
            process.exit(rc)

    # --- faults the lab can inject on this target ------------------------------------------
    async def stop_accepting(self) -> None:
        """Become unreachable: close the listener and every connection (port stays known)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for c in list(self._connections):
            c.close()

    async def resume_accepting(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            self._server = await asyncssh.create_server(
                lambda: _Server(self), "127.0.0.1", self.port,
                server_host_keys=[self.hostkey.key], process_factory=self._handle,
                encoding=None, allow_scp=False, sftp_factory=None,
            )

    async def stop(self) -> None:
        await self.stop_accepting()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        # what the session left running: tmux servers (kept up by exit-empty off) and their jobs
        await asyncio.to_thread(remove_workdir if self._own_tmp else stop_processes,
                                self.workdir if self._own_tmp else self.home)

    async def __aenter__(self) -> LocalTarget:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- synchronous use (CLI, pytest session fixtures) -------------------------------------
    def start_in_thread(self) -> HostSpec:
        ready: Future[HostSpec] = Future()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                try:
                    ready.set_result(loop.run_until_complete(self.start()))
                except BaseException as exc:
                    ready.set_exception(exc)
                else:
                    loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        self._thread = threading.Thread(target=main, name="jobkit-local-ssh", daemon=True)
        self._thread.start()
        return ready.result(timeout=30)

    def call_in_thread(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        if self._loop is None:
            raise RuntimeError("not started with start_in_thread()")
        return asyncio.run_coroutine_threadsafe(_call(fn), self._loop).result(timeout=30)

    def pause(self, limit: float = 60.0) -> None:
        """Freeze the host, as ``docker pause`` does to a container: the server's event loop
        stops (no byte is read or written on any connection, no channel closes) until
        :meth:`resume`, or ``limit`` seconds at most so a failed test cannot hang forever."""
        if self._loop is None:
            raise RuntimeError("not started with start_in_thread()")
        resume, frozen = threading.Event(), threading.Event()
        self._resume_event = resume

        def block() -> None:
            frozen.set()
            resume.wait(limit)

        self._loop.call_soon_threadsafe(block)
        if not frozen.wait(10):
            raise RuntimeError("the local target's loop did not freeze")

    def resume(self) -> None:
        event = getattr(self, "_resume_event", None)
        if event is not None:
            event.set()

    def stop_in_thread(self) -> None:
        self.resume()  # a paused loop could not stop
        if self._loop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended (a failed start)
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop = None


async def _call(fn: Callable[[], Awaitable[Any]]) -> Any:
    return await fn()


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
