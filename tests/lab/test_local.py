"""The embedded `local` target: real SSH, no Docker."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncssh
import pytest

from jobkit.deploy import deploy
from jobkit.errors import HostUnreachable, RemoteTimeout
from jobkit.lab import Lab
from jobkit.lab.keys import client_key
from jobkit.lab.local import LocalTarget
from jobkit.transport_ssh import SSHTransport
from tests.lab.scenarios import wrapper_end_to_end

pytestmark = pytest.mark.unit


@pytest.fixture
async def local() -> AsyncIterator[LocalTarget]:
    async with LocalTarget() as target:
        yield target


async def test_commands_run_with_status_stdin_and_streams(local: LocalTarget) -> None:
    t = SSHTransport(local.spec)
    try:
        r = await t.run("read x; echo out:$x; echo err >&2; exit 7", stdin="hello\n")
        assert (r.exit_status, r.stdout, r.stderr) == (7, "out:hello\n", "err\n")
        r = await t.run('echo "$HOME"')
        assert r.stdout.strip() == str(local.home)
        r = await t.run("kill -s KILL $$")
        assert r.exit_status == 137
    finally:
        await t.close()


async def test_sessions_start_with_default_signals_even_when_the_server_ignores_them(
    local: LocalTarget,
) -> None:
    # Under `nohup` (or a CI runner ignoring HUP) the server inherits ignored signals; sshd
    # starts sessions with defaults, and a shell cannot trap a signal ignored on entry.
    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
    t = SSHTransport(local.spec)
    try:
        for s in before:
            signal.signal(s, signal.SIG_IGN)
        r = await t.run("sed -n 's/^SigIgn:[[:space:]]*//p' /proc/self/status")
        ignored = int(r.stdout, 16)
        assert not ignored & (1 << (signal.SIGHUP - 1)), r.stdout
        assert not ignored & (1 << (signal.SIGUSR1 - 1)), r.stdout
        r = await t.run("trap 'exit 42' HUP; kill -s HUP $$; sleep 5")
        assert r.exit_status == 42
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        await t.close()


async def test_a_key_that_is_not_the_sessions_is_refused(local: LocalTarget, tmp_path: Path) -> None:
    other = client_key(tmp_path / "other")
    t = SSHTransport(replace(local.spec, private_key=other.path))
    with pytest.raises(HostUnreachable, match="ermission denied"):
        await t.run("true")


async def test_a_server_with_another_host_key_is_refused(local: LocalTarget) -> None:
    wrong = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    t = SSHTransport(replace(local.spec, known_host_key=wrong))
    with pytest.raises(HostUnreachable):
        await t.run("true")


async def test_a_slow_command_times_out_within_the_bound(local: LocalTarget) -> None:
    t = SSHTransport(local.spec)
    try:
        with pytest.raises(RemoteTimeout):
            await t.run("sleep 5", timeout=0.5)
        assert (await t.run("echo still usable")).stdout == "still usable\n"
    finally:
        await t.close()


async def test_the_wrapper_runs_end_to_end(local: LocalTarget) -> None:
    t = SSHTransport(local.spec)
    try:
        report = await deploy(t)
        assert report.changed
        assert not (await deploy(t)).changed  # idempotent
        await wrapper_end_to_end(t, "local")
    finally:
        await t.close()


def test_lab_start_local_is_ready_and_prints_a_working_ssh_command() -> None:
    with Lab() as lab:
        host = lab.start("local")
        assert lab.start("local") is host  # shared within the session
        assert host.deploy is not None
        assert host.ready_seconds < 3
        out = subprocess.run([*host.ssh_command().split(), "echo via-openssh"], capture_output=True,
                             text=True, timeout=20, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "via-openssh\n"
