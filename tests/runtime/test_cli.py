"""The runtime CLI as a person or a script uses it, against the embedded local target."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import cli
from jobkit.lab import Lab, LabHost

pytestmark = pytest.mark.slow


@pytest.fixture
def local(jobkit_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabHost]:
    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path / "home"))
    host = jobkit_lab.start("local")
    return host


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def add(capsys: pytest.CaptureFixture[str], host: LabHost, name: str = "lab", port: int | None = None) -> None:
    rc, out, _ = run(capsys, "hosts", "add", name, f"ssh://{host.spec.user}@127.0.0.1:{port or host.spec.port}",
                     "--key", str(host.spec.private_key), "--known-host-key", host.spec.known_host_key or "")
    assert rc == 0, out


def test_submit_status_reconcile_cancel(local: LabHost, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, local)
    rc, out, _ = run(capsys, "hosts", "ls", "--json")
    assert rc == 0
    assert json.loads(out)[0]["name"] == "lab"
    rc, out, err = run(capsys, "submit", "lab", "--json", "--", "sh", "-c", "exit 4")
    assert rc == 0, err
    failing = json.loads(out)["id"]
    rc, out, err = run(capsys, "submit", "lab", "--", "sleep", "60")
    assert rc == 0, err
    sleeper = out.strip()
    deadline = time.monotonic() + 15
    while True:
        rc, out, _ = run(capsys, "reconcile", "--json")
        jobs = {j["id"]: j for h in json.loads(out)["hosts"] for j in h["jobs"]}
        if jobs[failing]["status"] == "failed" and jobs[sleeper]["status"] == "running":
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(0.2)
    assert jobs[failing]["exit_code"] == 4
    rc, out, _ = run(capsys, "cancel", sleeper)
    assert (rc, out.strip()) == (0, f"{sleeper}: signalled-wrapper")
    deadline = time.monotonic() + 15
    while True:
        run(capsys, "reconcile")
        rc, out, _ = run(capsys, "status", sleeper, "--json")
        if json.loads(out)[0]["status"] == "failed":
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    rc, out, _ = run(capsys, "status")
    assert sleeper in out
    assert "JOB" in out.splitlines()[0]


def test_bad_input_is_a_clear_error_never_a_traceback(local: LabHost, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "submit", "nosuchhost", "--", "true")
    assert rc == 2
    assert "unknown host 'nosuchhost'" in err
    add(capsys, local)
    rc, _, err = run(capsys, "submit", "lab", "--id", "x'; DROP TABLE jobs; --", "--", "true")
    assert rc == 2
    assert "invalid job id" in err
    rc, _, err = run(capsys, "status", "../x")
    assert rc == 2
    rc, _, err = run(capsys, "hosts", "add", "h", "http://x", "--key", "/nonexistent")
    assert rc == 2


def test_an_unreachable_host_is_reported_with_a_nonzero_exit(local: LabHost,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    add(capsys, local, name="dead", port=dead_port)
    rc, _, err = run(capsys, "submit", "dead", "--", "true")
    assert rc == 1
    assert "cannot connect" in err
    rc, out, err = run(capsys, "reconcile", "--host", "dead")
    assert rc == 3
    assert "UNAVAILABLE" in out
    assert "unavailable: dead" in err


def test_a_submit_whose_outcome_is_unknown_prints_the_id_and_exits_3(jobkit_lab: Lab, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path / "home"))
    host = jobkit_lab.start("local", fresh=True)
    assert host.local is not None
    try:
        add(capsys, host)
        assert run(capsys, "submit", "lab", "--", "true")[0] == 0  # deployed
        # the launch of the session answers later than submit's 10 s bound: the host acts after the
        # client gave up
        host.local.delay, host.local.delay_only = 12.0, "new-session"
        rc, out, err = run(capsys, "submit", "lab", "--no-deploy", "--id", "unknown-1", "--", "true")
        assert rc == 3, err
        assert out.strip() == "unknown-1"
        assert "may or may not have started" in err
        rc, out, _ = run(capsys, "status", "unknown-1", "--json")
        assert json.loads(out)[0]["status"] == "queued"
    finally:
        host.local.delay, host.local.delay_only = 0.0, None
        host.stop()


def test_an_id_used_on_the_host_by_another_store_is_refused_with_exit_2(
        local: LabHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, local)
    assert run(capsys, "submit", "lab", "--id", "shared-id-1", "--", "true")[0] == 0
    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path / "other"))  # a second store, same host
    add(capsys, local)
    rc, _, err = run(capsys, "submit", "lab", "--id", "shared-id-1", "--", "true")
    assert rc == 2
    assert "job id shared-id-1 already used on lab" in err
    rc, out, _ = run(capsys, "status", "--json")
    assert json.loads(out) == []


def test_a_host_with_a_broken_key_fails_its_own_line_of_reconcile(
        local: LabHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, local)
    broken = tmp_path / "broken_key"
    broken.write_bytes(local.spec.private_key.read_bytes())
    rc, _, err = run(capsys, "hosts", "add", "bad", f"ssh://{local.spec.user}@127.0.0.1:{local.spec.port}",
                     "--key", str(broken), "--known-host-key", local.spec.known_host_key or "")
    assert rc == 0, err
    broken.write_text("garbage, not a key\n")  # broken after it was added
    rc, out, err = run(capsys, "reconcile")
    assert rc == 3
    assert "lab: reachable" in out
    assert "bad: UNAVAILABLE (cannot use the private key" in out
    assert "unavailable: bad" in err


def test_check_history_finds_nothing_in_real_use_and_every_tampered_transition(
        local: LabHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    add(capsys, local)
    ids = [run(capsys, "submit", "lab", "--", "sh", "-c", f"exit {code}")[1].strip() for code in (0, 3)]
    deadline = time.monotonic() + 15
    while True:
        _, out, _ = run(capsys, "reconcile", "--json")
        statuses = {j["id"]: j["status"] for h in json.loads(out)["hosts"] for j in h["jobs"]}
        if all(statuses.get(i) in ("completed", "failed") for i in ids):
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.2)
    rc, out, err = run(capsys, "check-history")
    assert rc == 0, out + err
    assert "0 impossible transition(s)" in out
    # a writer that ignored every rule: the job that failed 3 moved back to running, and a history
    # entry claims the job that completed failed
    db = sqlite3.connect(tmp_path / "home" / "store.db", isolation_level=None)
    db.execute("INSERT INTO job_status_history (job_id, status, timestamp, source, exit_code) "
               "VALUES (?, 'running', 1e10, 'rogue', NULL)", (ids[1],))
    db.close()
    rc, out, _ = run(capsys, "check-history", "--json")
    assert rc == 1
    found = {(v["job"], v["kind"]) for v in json.loads(out)["violations"]}
    assert (ids[1], "final_moved") in found
    rc, out, _ = run(capsys, "check-history", "--no-hosts")
    assert rc == 1
    assert f"{ids[1]}: final_moved: failed (exit 3) became running" in out
    # the host now says the completed job failed (both of its records): the store contradicts it
    home = local.spec.labels["home"]
    subprocess.run(["sqlite3", f"{home}/.jobkit/server.db",
                    f"UPDATE jobs SET status = 'failed', exit_code = 9 WHERE id = '{ids[0]}'"], check=True)
    state = Path(home) / ".jobkit" / "jobs" / f"{ids[0]}.status"
    state.write_text(state.read_text().replace('"status":"completed","exit_code":0', '"status":"failed","exit_code":9'))
    rc, out, _ = run(capsys, "check-history", "--json")
    found = {(v["job"], v["kind"]) for v in json.loads(out)["violations"]}
    assert (ids[0], "contradicts_host") in found


def test_submit_takes_a_directory_variables_and_a_name(local: LabHost, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, local)
    home = Path(local.spec.labels["home"])
    (home / "wd").mkdir(exist_ok=True)
    rc, out, err = run(capsys, "submit", "lab", "--cwd", "~/wd", "--env", "GREETING=hi there", "--env", "N=1",
                       "--name", "greeter", "--", "sh", "-c", 'echo "$GREETING $N" >out')
    assert rc == 0, err
    job = out.strip()
    deadline = time.monotonic() + 15
    while not (home / "wd" / "out").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    deadline = time.monotonic() + 15
    while (home / "wd" / "out").read_text() != "hi there 1\n":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rc, out, _ = run(capsys, "status", job, "--json")
    assert json.loads(out)[0]["name"] == "greeter"
    for bad in (["--env", "NOEQUALS"], ["--env", "1X=2"], ["--env", "JOBKIT_BASE_DIR=/x"], ["--name", ""]):
        rc, _, err = run(capsys, "submit", "lab", *bad, "--", "true")
        assert rc == 2, bad
        assert err.startswith("jobkit: error: --")


def test_an_interrupted_submit_is_listed_then_resolved_at_the_next_start(
        local: LabHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    add(capsys, local)
    db = tmp_path / "home" / "store.db"
    child = subprocess.run([sys.executable, "-m", "tests.runtime.submit_child", str(db), "lab", "halfmade-1",
                            "after:register"], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                           text=True, timeout=60, check=False)
    assert child.returncode == -9, child.stderr
    rc, out, _ = run(capsys, "sagas", "--unresolved")
    assert rc == 0
    assert "submit halfmade-1 running" in out
    assert "2 register      succeeded" in out
    rc, out, _ = run(capsys, "sagas", "--json")
    assert json.loads(out)[0]["steps"][2]["state"] == "succeeded"
    rc, out, err = run(capsys, "reconcile")
    assert "resolved 1 interrupted operation(s): 0 completed, 1 undone" in err
    rc, out, _ = run(capsys, "sagas", "--unresolved")
    assert out.strip() == "no unresolved sagas"
    rc, out, _ = run(capsys, "status", "halfmade-1", "--json")
    assert json.loads(out)[0]["status"] == "failed"


def test_watch_logs_each_change_survives_a_host_going_away_and_stops_cleanly_on_sigterm(
        local: LabHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import contextlib
    import os
    import queue
    import signal
    import sys
    import threading

    add(capsys, local)
    _rc, out, _ = run(capsys, "submit", "lab", "--", "sh", "-c", "sleep 1")
    job = out.strip()
    _rc, out, _ = run(capsys, "submit", "lab", "--", "sleep", "300")  # keeps the host watched
    long = out.strip()
    jobkit = [sys.executable, "-m", "jobkit.cli"]
    env = dict(os.environ, JOBKIT_HOME=str(tmp_path / "home"))
    watch = subprocess.Popen([*jobkit, "watch", "--interval", "0.3", "--timeout", "2"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got: queue.Queue[str] = queue.Queue()
    assert watch.stdout is not None
    reader = threading.Thread(target=lambda out=watch.stdout: [got.put(ln) for ln in out], daemon=True)
    reader.start()
    lines: list[str] = []

    def wait_for(*parts: str, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while not any(all(p in ln for p in parts) for ln in lines):
            left = deadline - time.monotonic()
            assert left > 0, (parts, lines)
            with contextlib.suppress(queue.Empty):
                lines.append(got.get(timeout=left))

    try:
        wait_for(f"{job}: ", "-> completed (exit 0) [database]")
        # the host goes away and comes back: said once each way, the service goes on
        assert local.local is not None
        local.local.call_in_thread(local.local.stop_accepting)
        try:
            wait_for("lab: UNAVAILABLE")
            # every change is a line on plain `watch` (no JOBKIT_LOG): a job that only went stale too
            wait_for(f"{long}: running (stale: False -> True")
        finally:
            local.local.call_in_thread(local.local.resume_accepting)
        wait_for("lab: reachable again")
        wait_for(f"{long}: running (stale: True -> False")
        assert sum("lab: UNAVAILABLE" in ln for ln in lines) == 1
        assert sum(f"{job}: " in ln and "-> completed" in ln for ln in lines) == 1  # one line per change
        watch.send_signal(signal.SIGTERM)
        _out, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
        assert "Traceback" not in err
        assert "finishing the tick in flight" in err
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
        reader.join(timeout=10)
    rc, _out, _ = run(capsys, "cancel", long)
    assert rc == 0
    # a job ends while nobody watches: the next start reconciles it and says so
    _rc, out, _ = run(capsys, "submit", "lab", "--", "sh", "-c", "exit 2")
    other = out.strip()
    deadline = time.monotonic() + 15
    for ended in (other, long):  # both recorded on the host (the cancelled one too)
        state = Path(local.spec.labels["home"]) / ".jobkit" / "jobs" / f"{ended}.status"
        while not all(w in (state.read_text() if state.exists() else "") for w in ('"failed"', '"db":"ok"')):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    once = subprocess.run([*jobkit, "watch", "--once"], env=env, capture_output=True, text=True, timeout=30,
                          check=False)
    assert once.returncode == 0, once.stderr
    assert f"{other}: queued -> failed (exit 2)" in once.stdout
    assert "while you were away: 2 failed" in once.stdout  # and the job cancelled above
    again = subprocess.run([*jobkit, "watch", "--once"], env=env, capture_output=True, text=True, timeout=30,
                           check=False)
    assert (again.returncode, again.stdout) == (0, ""), again  # nothing changed, nothing happened meanwhile


def test_watch_stops_cleanly_on_sigint(local: LabHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal
    import sys

    add(capsys, local)
    _rc, out, _ = run(capsys, "submit", "lab", "--", "sleep", "300")  # a host to watch
    long = out.strip()
    env = dict(os.environ, JOBKIT_HOME=str(tmp_path / "home"))
    watch = subprocess.Popen([sys.executable, "-m", "jobkit.cli", "watch", "--interval", "0.3", "--verbose"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        deadline = time.monotonic() + 20
        while "tick: " not in watch.stdout.readline():  # the signal handlers are in place by then
            assert time.monotonic() < deadline
            assert watch.poll() is None
        watch.send_signal(signal.SIGINT)  # Ctrl-C
        _out, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
        assert "Traceback" not in err
        assert "KeyboardInterrupt" not in err
        assert "finishing the tick in flight" in err
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert run(capsys, "cancel", long)[0] == 0


def test_a_host_from_the_users_ssh_config_runs_jobs_and_a_changed_host_key_is_refused_at_connect(
        local: LabHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncssh

    home = tmp_path / "user"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    spec = local.spec
    (home / ".ssh" / "config").write_text(f"Host lab-alias\n  HostName 127.0.0.1\n  Port {spec.port}\n"
                                          f"  User {spec.user}\n  IdentityFile {spec.private_key}\n")
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{spec.port} {spec.known_host_key}\n")
    rc, out, err = run(capsys, "hosts", "add", "viaconfig", "ssh://lab-alias")
    assert rc == 0, err
    rc, out, err = run(capsys, "submit", "viaconfig", "--", "sh", "-c", "exit 4")
    assert rc == 0, err
    job = out.strip()
    deadline = time.monotonic() + 20
    while True:
        run(capsys, "reconcile", "--host", "viaconfig")
        _rc, out, _ = run(capsys, "status", job, "--json")
        if json.loads(out)[0]["status"] == "failed":
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert json.loads(out)[0]["exit_code"] == 4
    # the server's key is not the one pinned any more (here: another key pinned on purpose)
    other = " ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2])
    assert run(capsys, "hosts", "add", "viaconfig", "ssh://lab-alias", "--known-host-key", other)[0] == 2
    rc, _, err = run(capsys, "hosts", "add", "viaconfig", "ssh://lab-alias", "--known-host-key", other,
                     "--replace-host-key")
    assert rc == 0, err
    rc, out, err = run(capsys, "reconcile", "--host", "viaconfig")
    assert rc == 3
    assert "refusing to connect: the host key at 127.0.0.1" in out + err
    assert "--replace-host-key" in out + err
