"""`jobkit logs` as a person uses it, on the embedded local target: the output of a job, its
stderr, a tail, a follow that ends with the job, Ctrl-C, and a clear line for every way a job
can have no output."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import cli
from jobkit.lab import Lab, LabHost
from jobkit.store import Store
from jobkit.transport_ssh import SSHTransport
from tests.procs import finish

pytestmark = pytest.mark.slow
JOBKIT = Path(sys.executable).parent / "jobkit"


@pytest.fixture
def local(jobkit_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabHost]:
    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path / "home"))
    return jobkit_lab.start("local")


@pytest.fixture(params=[pytest.param("local", id="local"),
                        pytest.param("busybox", id="busybox", marks=pytest.mark.container)])
def target(request: pytest.FixtureRequest, jobkit_lab: Lab, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> LabHost:
    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path / "home"))
    return jobkit_lab.start(request.param)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def one_error(capsys: pytest.CaptureFixture[str], code: int, *argv: str) -> str:
    rc, out, err = run(capsys, *argv)
    assert (rc, out) == (code, ""), err
    assert err.startswith("jobkit: error: "), err
    assert err.count("\n") == 1, err
    return err


def add(capsys: pytest.CaptureFixture[str], host: LabHost, name: str = "lab", port: int | None = None) -> None:
    rc, _, err = run(capsys, "hosts", "add", name, f"ssh://{host.spec.user}@127.0.0.1:{port or host.spec.port}",
                     "--key", str(host.spec.private_key), "--known-host-key", host.spec.known_host_key or "")
    assert rc == 0, err


def submit(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    rc, out, err = run(capsys, "submit", "lab", "--", *argv)
    assert rc == 0, err
    return out.strip()


def on_host(host: LabHost, command: str) -> str:
    async def go() -> str:
        t = SSHTransport(host.spec)
        try:
            return (await t.run(command, check=True)).stdout
        finally:
            await t.close()

    return asyncio.run(go())


def test_logs_prints_the_output_a_tail_and_follows_until_the_job_ends(target: LabHost,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, target)
    job = submit(capsys, "sh", "-c", 'for i in 1 2 3; do echo "line $i"; sleep 0.2; done; echo oops >&2; exit 1')
    rc, out, err = run(capsys, "logs", "--follow", job)  # starts while the job runs, ends with it
    assert (rc, out, err) == (0, "line 1\nline 2\nline 3\n", "")
    assert run(capsys, "logs", job) == (0, "line 1\nline 2\nline 3\n", "")
    assert run(capsys, "logs", job, "--stderr") == (0, "oops\n", "")
    assert run(capsys, "logs", job, "--tail", "2") == (0, "line 2\nline 3\n", "")
    assert run(capsys, "logs", job, "--bytes", "2") == (0, "3\n", "")
    assert run(capsys, "logs", job, "--tail", "0") == (0, "", "")


def test_logs_bad_input_is_one_line_and_exit_2(local: LabHost, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, local)
    assert "unknown job 'nosuch'" in one_error(capsys, 2, "logs", "nosuch")
    assert "invalid job id" in one_error(capsys, 2, "logs", "../x")
    assert "--tail" in one_error(capsys, 2, "logs", "j", "--tail", "-1")
    assert "--bytes" in one_error(capsys, 2, "logs", "j", "--bytes", "many")
    assert "not allowed with" in one_error(capsys, 2, "logs", "j", "--tail", "1", "--bytes", "1")


def test_logs_says_why_a_job_has_no_output(local: LabHost, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, local)
    store = Store(Path(os.environ["JOBKIT_HOME"]) / "store.db")
    try:
        waiting, plain = f"waiting-{uuid.uuid4().hex[:6]}", f"plain-{uuid.uuid4().hex[:6]}"
        store.add_job(waiting, "lab", ["true"])
        store.add_job(plain, "lab", ["echo", "hi"])
    finally:
        store.close()
    assert run(capsys, "submit", "lab", "--", "true")[0] == 0  # deployed
    assert "has not started on lab yet" in one_error(capsys, 1, "logs", waiting)
    # a job run by a wrapper that was not told to keep its output (another client, an older jobkit)
    on_host(local, f'JOBKIT_BASE_DIR="$HOME/.jobkit" sh "$HOME/.jobkit/bin/job_wrapper.sh" {plain} echo hi '
                   ">/dev/null 2>&1")
    assert "no output kept for job" in one_error(capsys, 1, "logs", plain)


def test_logs_of_a_job_on_an_unreachable_host(local: LabHost, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    add(capsys, local, name="dead", port=dead)
    store = Store(Path(os.environ["JOBKIT_HOME"]) / "store.db")
    try:
        store.add_job("far-away", "dead", ["true"])
    finally:
        store.close()
    err = one_error(capsys, 1, "logs", "far-away")
    assert "cannot read the output of far-away" in err
    assert "cannot connect" in err


@pytest.mark.parametrize(("sig", "code", "says"), [(signal.SIGINT, 130, "jobkit: interrupted\n"),
                                                   (signal.SIGTERM, 143, "jobkit: terminated (SIGTERM)\n")])
def test_a_follow_stops_cleanly_on_ctrl_c(local: LabHost, capsys: pytest.CaptureFixture[str], sig: signal.Signals,
                                          code: int, says: str) -> None:
    add(capsys, local)
    job = submit(capsys, "sh", "-c", "echo started; exec sleep 60")
    assert local.local is not None
    before = len(local.local._connections)
    p = subprocess.Popen([str(JOBKIT), "logs", "--follow", job], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=os.environ.copy())
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == b"started\n"  # following a running job
        p.send_signal(sig)
        _out, err = p.communicate(timeout=60)
    finally:
        finish(p)
    assert (p.returncode, err.decode()) == (code, says)
    deadline = time.monotonic() + 10
    while len(local.local._connections) > before:  # its SSH connection went with it
        assert time.monotonic() < deadline, "the follower's connection stayed open"
        time.sleep(0.05)
    assert run(capsys, "cancel", job)[0] == 0
    _, out, _ = run(capsys, "status", job, "--json")
    assert json.loads(out)[0]["id"] == job
