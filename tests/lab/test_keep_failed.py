"""`jobkit conformance --keep-failed` on a lab target: a target where a clause failed stays up with
a working ssh line and a `jobkit lab down ID` that removes it; a target where all passed does not."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import docker
import pytest

from jobkit import cli
from jobkit.lab import LABEL
from jobkit.lab.build import build
from tests.broken_wrappers import BUGS, write

pytestmark = [pytest.mark.container, pytest.mark.slow]
TARGET = "busybox"


def kept_ids() -> set[str]:
    """Lab containers kept by this process (other sessions on the engine are never looked at)."""
    client = docker.from_env()
    try:
        return {c.id for c in client.containers.list(all=True, filters={"label": [
            f"{LABEL}=1", f"{LABEL}.keep=1", f"{LABEL}.pid={os.getpid()}"]})}
    finally:
        client.close()


def test_a_failed_target_stays_up_with_a_way_in_and_a_way_out(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    build(TARGET)
    before = kept_ids()
    broken = write(next(b for b in BUGS if b.name == "unescaped_json"), tmp_path)
    rc = cli.main(["conformance", "--target", TARGET, "--wrapper", str(broken), "--clause", "W-18",
                   "--keep-failed", "--report-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 1, out
    kept = re.search(r"kept for inspection \(container (\w{12})\)", out)
    assert kept, out
    short = kept.group(1)
    try:
        cid = next(c for c in kept_ids() - before if c.startswith(short))  # StopIteration: not kept
        ssh = re.search(r"log in:  (ssh .*)", out)
        assert ssh, out
        assert f"remove:  jobkit lab down {short}" in out
        # the printed line logs in, and the failed clause's job files are there to look at
        r = subprocess.run([*shlex.split(ssh.group(1)), "-o", "BatchMode=yes", "ls ~/.jobkit-conformance/jobs"],
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        assert "cf-esc-" in r.stdout
        assert cli.main(["lab", "down", short]) == 0
        assert cid not in kept_ids()
    finally:  # only the container this test's run kept
        if any(c.startswith(short) for c in kept_ids()):
            cli.main(["lab", "down", short])


def test_a_target_where_everything_passed_is_not_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(TARGET)
    before = kept_ids()
    rc = cli.main(["conformance", "--target", TARGET, "--clause", "W-1", "--keep-failed",
                   "--report-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert kept_ids() == before
    assert "kept for inspection" not in out
    assert not re.search(r"lab down \w{12}", out)


def test_lab_up_local_cannot_be_kept(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lab", "up", "local", "--keep"]) == 2
    assert "cannot be kept" in capsys.readouterr().err


def test_a_run_that_ends_early_keeps_nothing() -> None:
    from jobkit.lab import Lab
    from jobkit.lab.keep import KeepFailed

    build(TARGET)
    before = kept_ids()
    with Lab() as lab:
        keeper = KeepFailed(lab)
        host = keeper.start(TARGET)
        cid = host.container_id
        assert cid in kept_ids()
        keydir = host.spec.private_key.parent
        assert keydir.exists()
        # no decide(): the run ended before its outcome was known (an error, Ctrl-C)
    assert kept_ids() == before
    assert not keydir.exists()


def test_the_summary_names_targets_that_cannot_be_kept() -> None:
    class FakeLab:
        def on_close(self, fn: object) -> None:
            pass

    from jobkit.lab.keep import KeepFailed

    keeper = KeepFailed(FakeLab())  # type: ignore[arg-type]
    text = keeper.summary(["local", "ssh://me@host:22", "local"])
    assert text.splitlines() == ["local: not kept (it runs inside this process)",
                                 "ssh://me@host:22: not kept (it is not a lab container)"]
