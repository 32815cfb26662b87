"""A lab session leaves nothing behind: no work directory, no private key, no tmux server, on
every way out (close, an exception in the body, SIGTERM to the CLI); and a session that could
not clean up (SIGKILL) is reaped by the next one, never a live one."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit.lab import Lab, LabHost
from jobkit.lab.local import LocalTarget
from jobkit.lab.session import Owner, boot_id, sessions_root, stop_processes
from jobkit.transport_ssh import SSHTransport
from tests.procs import finish

ROOT = Path(__file__).resolve().parent.parent.parent
JOBKIT = ROOT / ".venv" / "bin" / "jobkit"
DEAD_PID = 4_000_000  # above any pid_max: never alive

# a tmux job as the runner starts one: dedicated socket, server kept up with exit-empty off
TMUX_JOB = ('b="$HOME/.jobkit"; mkdir -p "$b"; tmux -S "$b/tmux.sock" start-server \\; '
            'set-option -g exit-empty off \\; && tmux -S "$b/tmux.sock" new-session -d -s hyg "sleep 300"')


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path: a tmux socket path must fit in 107 bytes. Whatever still
    runs in it at the end (a failed test) is stopped, then it is removed."""
    d = Path(tempfile.mkdtemp(prefix="jk-", dir="/tmp"))
    try:
        yield d
    finally:
        stop_processes(d)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def roots(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(cache dir, temp dir) of this test only, so what a session leaves can be seen."""
    cache, tmp = short_tmp / "c", short_tmp / "t"
    cache.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("JOBKIT_CACHE_DIR", str(cache))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return cache, tmp


def processes_mentioning(path: Path) -> list[str]:
    """Processes whose command line or working directory names something under ``path``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        if str(path) in cmdline or cwd.startswith(str(path)):
            found.append(f"{entry.name}: {cmdline.strip()} (cwd {cwd})")
    return found


def assert_nothing_left(*paths: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        procs = [p for path in paths for p in processes_mentioning(path)]
        if not procs:
            break
        assert time.monotonic() < deadline, f"still running: {procs}"
        time.sleep(0.05)
    left = [str(p) for path in paths for p in path.rglob("*") if not p.is_dir()]
    assert left == [], f"left behind: {left}"


def run_tmux_job(host: LabHost) -> None:
    async def go() -> None:
        t = SSHTransport(host.spec)
        try:
            await t.run(TMUX_JOB, check=True, timeout=15)
        finally:
            await t.close()

    asyncio.run(go())


def tmux_server_running(under: Path) -> bool:
    return any("tmux" in p and "start-server" in p for p in processes_mentioning(under))


@pytest.mark.unit
def test_a_lab_session_leaves_no_workdir_key_or_tmux_server(roots: tuple[Path, Path]) -> None:
    cache, tmp = roots
    with Lab() as lab:
        host = lab.start("local")
        run_tmux_job(host)
        assert tmux_server_running(lab.workdir)
        workdir = lab.workdir
        assert workdir.is_relative_to(cache), "session work dirs live in the cache dir, not /tmp"
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        assert host.spec.private_key.is_relative_to(workdir)
    assert not workdir.exists()
    assert_nothing_left(cache / "lab" / "sessions", tmp)


@pytest.mark.unit
def test_a_lab_session_cleans_up_when_its_body_raises(roots: tuple[Path, Path]) -> None:
    cache, tmp = roots
    seen: list[Path] = []

    def body() -> None:
        with Lab() as lab:
            seen.append(lab.workdir)
            run_tmux_job(lab.start("local"))
            assert tmux_server_running(lab.workdir)
            raise RuntimeError("body failed")

    with pytest.raises(RuntimeError, match="body failed"):
        body()
    assert not seen[0].exists()
    assert_nothing_left(cache / "lab" / "sessions", tmp)


@pytest.mark.unit
async def test_a_local_target_without_workdir_keeps_its_key_out_of_tmp(roots: tuple[Path, Path]) -> None:
    cache, tmp = roots
    async with LocalTarget() as target:
        assert target.workdir.is_relative_to(cache)
        assert stat.S_IMODE(target.workdir.stat().st_mode) == 0o700
        t = SSHTransport(target.spec)
        try:
            await t.run(TMUX_JOB, check=True, timeout=15)
        finally:
            await t.close()
        assert tmux_server_running(target.workdir)
    assert not target.workdir.exists()
    await asyncio.to_thread(assert_nothing_left, cache / "lab" / "sessions", tmp)


def fake_session(root: Path, owner: Owner) -> Path:
    """A session directory with a key and a tmux server running in it, as a session leaves it."""
    d = Path(tempfile.mkdtemp(prefix="lab-", dir=root))
    (d / "keys").mkdir(mode=0o700)
    (d / "keys" / "id_ed25519").write_text("PRIVATE")
    home = d / "local-0" / "home"
    home.mkdir(parents=True)
    owner.write(d)
    sock = home / ".jobkit" / "tmux.sock"
    sock.parent.mkdir()
    subprocess.run(["tmux", "-S", str(sock), "start-server", ";", "set-option", "-g", "exit-empty", "off", ";",
                    "new-session", "-d", "sleep 300"], cwd=home, check=True, timeout=10)
    return d


@pytest.mark.unit
def test_a_new_lab_reaps_sessions_whose_owner_is_gone_and_no_other(roots: tuple[Path, Path]) -> None:
    cache, _ = roots
    root = sessions_root()
    assert root.is_relative_to(cache)
    root.mkdir(parents=True)
    dead = fake_session(root, Owner(DEAD_PID, boot_id()))
    rebooted = fake_session(root, Owner(os.getpid(), "another-boot"))
    live = fake_session(root, Owner.current())
    try:
        assert tmux_server_running(dead)
        with Lab():
            assert not dead.exists()
            assert not rebooted.exists()
            assert live.exists()
            assert tmux_server_running(live)
        assert_nothing_left(dead, rebooted)
    finally:
        stop_processes(live)


def conformance(clauses: list[str], cache: Path, tmp: Path, report: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, JOBKIT_CACHE_DIR=str(cache), TMPDIR=str(tmp))
    args = [str(JOBKIT), "conformance", "--target", "local", "--report-dir", str(report)]
    for c in clauses:
        args += ["--clause", c]
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_conformance_run_leaves_nothing_behind(short_tmp: Path) -> None:
    cache, tmp = short_tmp / "c", short_tmp / "t"
    tmp.mkdir()
    proc = conformance(["W-1"], cache, tmp, short_tmp / "r")
    try:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        assert_nothing_left(tmp, *(p for p in [cache / "lab"] if p.exists()))
    finally:
        finish(proc)


@pytest.mark.slow
def test_a_conformance_run_sent_sigterm_mid_run_leaves_nothing_behind(short_tmp: Path) -> None:
    cache, tmp = short_tmp / "c", short_tmp / "t"
    tmp.mkdir()
    proc = conformance(["W-7", "W-10"], cache, tmp, short_tmp / "r")  # W-7 runs a job in tmux
    try:
        deadline = time.monotonic() + 60
        while not tmux_server_running(short_tmp):  # mid-run: the job's tmux server is up
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no tmux server started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, out + err
        assert "Traceback" not in err, err
        assert err.strip().splitlines()[-1] == "jobkit: terminated (SIGTERM)", err
        assert_nothing_left(tmp, *(p for p in [cache / "lab"] if p.exists()))
    finally:
        finish(proc)



@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_lab_up_local_stopped_by_a_signal_leaves_nothing_behind(sig: signal.Signals, short_tmp: Path) -> None:
    cache, tmp = short_tmp / "c", short_tmp / "t"
    tmp.mkdir()
    env = dict(os.environ, JOBKIT_CACHE_DIR=str(cache), TMPDIR=str(tmp))
    proc = subprocess.Popen([str(JOBKIT), "lab", "up", "local"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        ssh = proc.stdout.readline().split()  # the printed command line: the target is up
        assert ssh, proc.communicate(timeout=30)
        r = subprocess.run([*ssh, TMUX_JOB], capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        assert tmux_server_running(cache)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert_nothing_left(tmp, cache / "lab")
    finally:
        finish(proc)
