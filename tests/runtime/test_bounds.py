"""Every public call returns within its timeout plus a small constant, whatever the peer does:
a host that freezes mid-command, a connection that drops mid-answer, an idle host."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from jobkit.errors import ConnectionLost, HostUnreachable, RemoteTimeout, TransportError
from jobkit.lab import LabHost
from jobkit.models import JobStatus
from jobkit.probe import probe
from jobkit.reconcile import reconcile_host
from jobkit.runner import submit
from jobkit.store import AsyncStore
from jobkit.transport import CommandResult
from jobkit.transport_ssh import SSHTransport
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.slow
SLACK = 0.5  # what "a small constant" means here, generous for a loaded 2-core machine


def freeze(host: LabHost) -> None:
    if host.local is not None:
        host.local.pause()
    else:
        host.container.get_wrapped_container().pause()


def thaw(host: LabHost) -> None:
    if host.local is not None:
        host.local.resume()
    else:
        host.container.get_wrapped_container().unpause()


@pytest.fixture
async def fresh_transport(host: LabHost) -> AsyncIterator[SSHTransport]:
    t = SSHTransport(host.spec)
    yield t
    await t.close()


async def _started(t: SSHTransport, marker: str) -> bool:
    return (await t.run(f"test -e {marker}", timeout=5)).exit_status == 0


async def test_a_host_frozen_mid_command_times_out_within_the_bound(host: LabHost,
                                                                    fresh_transport: SSHTransport) -> None:
    t = fresh_transport
    marker = f"$HOME/.jobkit-bound-{uuid.uuid4().hex[:8]}"
    call = asyncio.create_task(t.run(f"touch {marker}; sleep 2; rm -f {marker}", timeout=3))
    start = time.monotonic()
    try:
        await wait_until(lambda: _started(t, marker), seconds=3)
        freeze(host)
        with pytest.raises(RemoteTimeout) as caught:
            await call
        elapsed = time.monotonic() - start
        assert caught.value.sent
        assert elapsed < 3 + SLACK, f"returned after {elapsed:.2f}s"
        closing = time.monotonic()
        await t.close()  # bounded too, on a host that still does not answer
        assert time.monotonic() - closing < 2 + SLACK
    finally:
        thaw(host)
    again = SSHTransport(host.spec)
    try:
        assert (await again.run("echo back", timeout=10)).stdout == "back\n"
    finally:
        await again.close()


async def test_after_timeouts_on_a_frozen_host_the_transport_recovers(host: LabHost,
                                                                     fresh_transport: SSHTransport) -> None:
    t = fresh_transport
    assert (await t.run("true")).exit_status == 0  # a connection is up
    freeze(host)
    try:
        start = time.monotonic()
        results = await asyncio.gather(*(t.run("true", timeout=1) for _ in range(12)), return_exceptions=True)
        assert time.monotonic() - start < 1 + SLACK
        assert all(isinstance(r, RemoteTimeout) for r in results), results
    finally:
        thaw(host)
    # the abandoned channels' slots come back (their connection was aborted), the next call reconnects
    r = await t.run("echo ok", timeout=10)
    assert r.stdout == "ok\n"


async def test_an_idle_probe_gets_its_end_of_input(host: LabHost, fresh_transport: SSHTransport) -> None:
    t = fresh_transport
    start = time.monotonic()
    assert (await t.run("cat", stdin="", timeout=5)).stdout == ""
    assert (await t.run("cat", timeout=5)).stdout == ""
    assert (await t.run("cat", stdin="x\n", timeout=5)).stdout == "x\n"
    result = await probe(t, [], "~/.jobkit-idle", timeout=5)
    assert result.host.reachable, result.host.error
    assert time.monotonic() - start < 3


async def test_reconcile_of_an_idle_host_is_quick_and_finds_orphans(host: LabHost, store: AsyncStore,
                                                                   transport: SSHTransport) -> None:
    stranger = f"orphan-{uuid.uuid4().hex[:8]}"
    await transport.run(f"b=\"$HOME/.jobkit\"; sqlite3 \"$b/server.db\" \"INSERT INTO jobs (id) VALUES ('{stranger}')\""
                        f" && \"$b/bin/job_wrapper.sh\" {stranger} true", check=True)
    start = time.monotonic()
    report = await reconcile_host(transport, store, host.target, timeout=5)
    assert time.monotonic() - start < 2
    assert report.reachable, report.error
    assert stranger in report.orphans


async def test_a_connection_lost_mid_command_is_connection_lost(local_host: LabHost) -> None:
    """The local target can drop every connection on demand (a container cannot)."""
    host = local_host
    t = SSHTransport(host.spec)
    marker = f"$HOME/.jobkit-lost-{uuid.uuid4().hex[:8]}"
    call = asyncio.create_task(t.run(f"touch {marker}; sleep 3; rm -f {marker}", timeout=10))
    try:
        await wait_until(lambda: _started(t, marker), seconds=5)
        local = host.local
        assert local is not None
        await asyncio.get_running_loop().run_in_executor(None, local.call_in_thread, local.stop_accepting)
        with pytest.raises(ConnectionLost) as caught:
            await call
        assert caught.value.sent
        assert isinstance(caught.value, HostUnreachable)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, local.call_in_thread, local.resume_accepting)
        await t.close()


async def test_a_connection_closing_while_channels_open_is_a_transport_error(local_host: LabHost) -> None:
    """The connection closes while the server confirms channels (a reaper aborting a stalled
    connection, a peer going away): asyncssh then fails the open with an AssertionError or an
    AttributeError of its own (a conformance clause reported a bare "assertion failed"). Every
    call must end with its result or a transport error, and no task may fail unobserved. The
    close is swept across the first milliseconds of the opens, where the race is."""
    loop = asyncio.get_running_loop()
    unobserved: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: unobserved.append(str(ctx.get("exception") or ctx["message"])))
    outcomes: dict[str, int] = {}
    try:
        for i in range(120):
            t = SSHTransport(local_host.spec)
            try:
                await t.run("true", timeout=5)
                calls = [asyncio.create_task(t.run("echo hi", timeout=5)) for _ in range(6)]
                await asyncio.sleep((i % 20) * 0.0002)
                conn = t._conn
                if conn is not None:
                    conn.abort()
                for r in await asyncio.gather(*calls, return_exceptions=True):
                    outcomes[type(r).__name__] = outcomes.get(type(r).__name__, 0) + 1
                    assert isinstance(r, (CommandResult, TransportError)), f"{type(r).__name__}: {r}"
            finally:
                await t.close()
    finally:
        loop.set_exception_handler(None)
    assert outcomes.get("ConnectionLost", 0) > 0, outcomes  # the sweep did close mid-open
    assert not [u for u in unobserved if "socket.send" not in u], unobserved


async def test_reconcile_on_a_host_frozen_mid_probe_is_unavailable_within_the_bound(
        host: LabHost, store: AsyncStore, transport: SSHTransport) -> None:
    job = (await submit(transport, store, host.target, ["sleep", "30"], job_id=f"frz-{uuid.uuid4().hex[:8]}")).job_id
    first = await reconcile_host(transport, store, host.target)
    assert first.reachable
    t = SSHTransport(host.spec)
    try:
        assert (await t.run("true")).exit_status == 0  # connected: the freeze lands mid-call
        freeze(host)
        try:
            start = time.monotonic()
            report = await reconcile_host(t, store, host.target, timeout=3)
            elapsed = time.monotonic() - start
        finally:
            thaw(host)
        assert elapsed < 3 + 1, f"reconcile took {elapsed:.2f}s"
        assert not report.reachable
        v = next(v for v in report.verdicts if v.job_id == job)
        assert (v.status, v.stale) == (JobStatus.RUNNING, True)
    finally:
        await t.close()
        await transport.run(f"tmux -S \"$HOME/.jobkit/tmux.sock\" kill-session -t ={job}; true")


async def test_timeouts_while_a_channel_opens_never_leak_server_sessions(host: LabHost,
                                                                        fresh_transport: SSHTransport) -> None:
    """The host is frozen while a channel is being opened: the caller gives up, the server opens
    it later. That channel must still be closed, or sshd's MaxSessions (10) is soon used up."""
    t = fresh_transport
    assert (await t.run("true")).exit_status == 0
    for _ in range(12):
        freeze(host)
        try:
            with pytest.raises(RemoteTimeout):
                await t.run("echo frozen", timeout=0.5)
        finally:
            thaw(host)
        assert (await t.run("echo ok", timeout=10)).stdout == "ok\n"
