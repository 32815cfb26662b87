"""`jobkit status JOB`: a job named on the command line is shown with its status history (status,
time, source, reason; `--json` too), read from the store's `job_status_history`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobkit import cli
from jobkit.hosts import HostSpec
from jobkit.store import Store

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path / "home"))
    s = Store(tmp_path / "home" / "store.db")
    s.add_host(HostSpec("h", "127.0.0.1", 22, "u", tmp_path / "key", "ssh-ed25519 AAAA"))
    # 2024-03-09 16:00:00 UTC, then a launch that failed (a history entry of the client)
    s.add_job("j1", "h", ["sleep", "1"], now=1710000000.0, name="nightly")
    s.mark_failed_launch("j1", "tmux: no server")
    s.add_job("j2", "h", ["true"], now=1710000100.0)
    return s


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_status_of_one_job_shows_its_history(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "status", "j1")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["JOB", "NAME", "HOST", "STATUS"]
    assert lines[1].split()[:4] == ["j1", "nightly", "h", "failed"]
    at = lines.index("history of j1:")
    assert lines[at + 1].split() == ["TIME", "STATUS", "EXIT", "SOURCE", "REASON"]
    assert lines[at + 2].split() == ["2024-03-09T16:00:00Z", "queued", "client", "submitted"]
    assert lines[at + 3].split()[1:] == ["failed", "client", "launch", "failed:", "tmux:", "no", "server"]
    assert len(lines) == at + 4
    store.close()


def test_status_of_one_job_as_json_has_its_history(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "status", "j1", "--json")
    assert rc == 0, err
    (job,) = json.loads(out)
    assert (job["id"], job["status"], job["name"]) == ("j1", "failed", "nightly")
    first, second = job["history"]
    assert first == {"status": "queued", "time": "2024-03-09T16:00:00Z", "timestamp": 1710000000.0,
                     "source": "client", "reason": "submitted", "exit_code": None, "version": 0,
                     "observed_at": 1710000000.0}
    assert (second["status"], second["source"], second["reason"], second["version"]) == (
        "failed", "client", "launch failed: tmux: no server", 1)
    assert second["timestamp"] >= first["timestamp"]
    store.close()


def test_status_of_several_named_jobs_shows_each_history(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "status", "j1", "j2")
    assert rc == 0
    assert "history of j1:" in out
    assert "history of j2:" in out
    rc, out, _ = run(capsys, "status", "j1", "j2", "--json")
    assert [len(j["history"]) for j in json.loads(out)] == [2, 1]
    store.close()


def test_status_of_every_job_stays_one_table(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "status")
    assert rc == 0
    assert "history of" not in out
    assert [ln.split()[0] for ln in out.splitlines()] == ["JOB", "j1", "j2"]
    rc, out, _ = run(capsys, "status", "--json")
    assert all("history" not in j for j in json.loads(out))
    store.close()


def test_status_of_an_unknown_job_is_one_line_and_exit_2(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "status", "nosuch")
    assert (rc, out) == (2, "")
    assert err == "jobkit: error: unknown job 'nosuch'\n"
    store.close()
