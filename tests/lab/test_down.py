"""`jobkit lab up` / `lab down` next to other lab sessions on the same Docker engine: `down` removes
what `up` kept (by target or by the id `up` printed) and containers whose owner is gone, never a
container a live session is using."""

from __future__ import annotations

import asyncio
import os
import re
import select
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from jobkit import cli
from jobkit.lab import LABEL, Lab, LabHost, load_manifest
from jobkit.lab.build import build
from jobkit.lab.session import boot_id
from jobkit.transport_ssh import SSHTransport

pytestmark = pytest.mark.container
TARGET = "busybox"
DEAD_PID = 4_000_000  # above any pid_max: never alive

OTHER_SESSION = """
import sys
from jobkit.lab import Lab
with Lab() as lab:
    print(lab.start(sys.argv[1]).container_id, flush=True)
    sys.stdin.read()  # until the test lets go
"""


def ids() -> set[str]:
    return {c.id for c in docker.from_env().containers.list(all=True, filters={"label": f"{LABEL}=1"})}


def answers(host: LabHost) -> bool:
    async def go() -> bool:
        t = SSHTransport(host.spec)
        try:
            return (await t.run("echo up", timeout=10)).stdout == "up\n"
        finally:
            await t.close()

    return asyncio.run(go())


def lab_up(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """`jobkit lab up TARGET`: (container id it printed, the ssh command line)."""
    assert cli.main(["lab", "up", TARGET]) == 0
    out, err = capsys.readouterr()
    m = re.search(r"jobkit lab down ([0-9a-f]{12})\b", err)
    assert m, err
    return m.group(1), out.strip()


@pytest.fixture
def other_session() -> Iterator[str]:
    """A lab session in another live process, using its own busybox container: its id."""
    proc = subprocess.Popen([sys.executable, "-c", OTHER_SESSION, TARGET], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 90)
        line = proc.stdout.readline().strip() if ready else ""
        assert re.fullmatch(r"[0-9a-f]{64}", line), f"the other session did not start: {line!r}"
        yield line
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_down_removes_kept_and_orphaned_containers_never_a_live_sessions(
        other_session: str, capsys: pytest.CaptureFixture[str]) -> None:
    build(TARGET)  # cached: a no-op when the image is up to date
    client = docker.from_env()
    before = ids()
    created: list[str] = []
    try:
        with Lab() as lab:
            ours = lab.start(TARGET)  # a session of this process, alive
            kept_by_id, ssh = lab_up(capsys)
            created.append(kept_by_id)
            kept_by_name, _ = lab_up(capsys)
            created.append(kept_by_name)
            orphan = client.containers.create(load_manifest()[TARGET].image, labels={
                LABEL: "1", f"{LABEL}.session": "crashed", f"{LABEL}.pid": str(DEAD_PID),
                f"{LABEL}.boot": boot_id(), f"{LABEL}.target": TARGET, f"{LABEL}.keep": "0"})
            created.append(orphan.id)

            # the kept container answers the printed ssh command: its key outlived `lab up`
            r = subprocess.run([*shlex.split(ssh), "echo via-openssh"], capture_output=True, text=True,
                               timeout=30, check=False)
            assert (r.returncode, r.stdout) == (0, "via-openssh\n"), r.stderr
            key = Path(shlex.split(ssh)[shlex.split(ssh).index("-i") + 1])

            # by the id `lab up` printed: that container only
            assert cli.main(["lab", "down", kept_by_id]) == 0
            capsys.readouterr()
            now = ids()
            assert not any(i.startswith(kept_by_id) for i in now)
            assert not key.exists(), "the kept container's key goes with it"
            assert {ours.container_id, other_session, orphan.id} <= now
            assert any(i.startswith(kept_by_name) for i in now)

            # a live session's container, by id: refused, left alone
            for live in (ours.container_id, other_session):
                assert live is not None
                assert cli.main(["lab", "down", live[:12]]) == 2
                err = capsys.readouterr().err
                assert "in use by a running lab session" in err, err
                assert err.count("\n") == 1
                assert "Traceback" not in err
            assert {ours.container_id, other_session} <= ids()

            # by target: what `lab up` kept and what a dead session left, never a live session's
            foreign = [c.id for c in client.containers.list(all=True, filters={"label": [
                f"{LABEL}.keep=1", f"{LABEL}.target={TARGET}"]}) if not c.id.startswith(kept_by_name)]
            if foreign:
                pytest.skip(f"someone else's `lab up {TARGET}` container is here ({foreign[0][:12]}): "
                            f"`lab down {TARGET}` would remove it")
            assert cli.main(["lab", "down", TARGET]) == 0
            out = capsys.readouterr().out
            now = ids()
            assert not any(i.startswith(kept_by_name) for i in now), out
            assert orphan.id not in now, out
            assert {ours.container_id, other_session} <= now, out
            assert "running lab session" in out  # says what it left alone
            assert answers(ours)
            assert client.containers.get(other_session).status == "running"

            # a second lab in this process reaps orphans only: both live sessions keep theirs
            with Lab() as second:
                second.start(TARGET, fresh=True)
                assert {ours.container_id, other_session} <= ids()
    finally:  # what this test made (`lab up` in this process, the orphan) and a failure left behind
        for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
            labels = c.labels or {}
            mine = labels.get(f"{LABEL}.keep") == "1" and labels.get(f"{LABEL}.pid") == str(os.getpid())
            if c.id not in before and (mine or c.id in created):
                cli.main(["lab", "down", c.id])


def test_down_of_an_unknown_name_or_id_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lab", "down", "no-such-thing"]) == 2
    err = capsys.readouterr().err
    assert "no lab target or lab container" in err, err
    assert err.count("\n") == 1, err
