"""`jobkit conformance` as a user runs it: a real host by ssh://, the four report formats, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from jobkit import cli
from jobkit.lab import LabHost
from tests.broken_wrappers import BUGS, write

pytestmark = pytest.mark.slow



def test_a_real_host_by_ssh_url_and_the_four_reports(local_host: LabHost, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{local_host.spec.port} {local_host.spec.known_host_key}\n")
    url = f"ssh://{local_host.spec.user}@127.0.0.1:{local_host.spec.port}"
    rc = cli.main(["conformance", "--target", url, "--key", str(local_host.spec.private_key),
                   "--known-hosts", str(known), "--clause", "W-1", "--clause", "W-17",
                   "--report-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "W-17" in out
    data = json.loads((tmp_path / "r" / "conformance.json").read_text())
    assert [(r["clause"], r["outcome"]) for r in data["results"]] == [("W-1", "pass"), ("W-17", "pass")]
    suite = ET.parse(tmp_path / "r" / "conformance.junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "2"
    assert "<table>" in (tmp_path / "r" / "conformance.html").read_text()


def test_a_failing_must_clause_exits_nonzero_with_evidence(local_host: LabHost, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    broken = write(next(b for b in BUGS if b.name == "unescaped_json"), tmp_path)
    rc = cli.main(["conformance", "--target", "local", "--wrapper", str(broken),
                   "--base-dir", "~/.conf-cli-broken", "--clause", "W-18", "--report-dir", str(tmp_path / "r")])
    assert rc == 1
    captured = capsys.readouterr()
    assert "FAIL W-18" in captured.out
    html = (tmp_path / "r" / "conformance.html").read_text()
    assert "Evidence behind every failure" in html
    assert "W-18" in html
    junit = (tmp_path / "r" / "conformance.junit.xml").read_text()
    assert "<failure" in junit


def test_an_unknown_target_or_clause_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["conformance", "--target", "solaris"]) == 2
    assert "unknown target" in capsys.readouterr().err
    assert cli.main(["conformance", "--clause", "W-99"]) == 2
    assert "unknown clause" in capsys.readouterr().err


def test_a_failure_carries_its_repro_reruns_and_waivers_gate_it(local_host: LabHost, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    broken = write(next(b for b in BUGS if b.name == "unescaped_json"), tmp_path)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    common = ["conformance", "--target", "local", "--wrapper", str(broken), "--base-dir", "~/.conf-cli-gate"]
    first = tmp_path / "r1"
    assert cli.main([*common, "--clause", "W-1*", "--clause", "W-18", "--format", "github",
                     "--report-dir", str(first)]) == 1
    out = capsys.readouterr().out
    data = json.loads((first / "conformance.json").read_text())
    import jsonschema

    from jobkit.conformance.report import schema_path
    jsonschema.validate(data, json.loads(schema_path().read_text()))
    assert data["exit_code"] == 1
    failed = [r for r in data["results"] if r["outcome"] != "pass"]
    assert [r["clause"] for r in failed] == ["W-18"]
    repro = failed[0]["repro"]
    assert repro.startswith("jobkit conformance --target local --clause W-18 --wrapper ")
    assert f"rerun: {repro}" in out
    assert any("job_wrapper.sh" in c for c in failed[0]["commands"])
    assert [line for line in out.splitlines() if line.startswith("::error")] == [
        line for line in out.splitlines() if line.startswith("::error title=conformance W-18 FAIL on local::")]
    assert "| W-18 | MUST |" in summary.read_text()
    # the repro line reruns just that clause there (argv as the shell would split it)
    import shlex
    assert cli.main([*shlex.split(repro)[1:], "--report-dir", str(tmp_path / "repro")]) == 1
    assert [r["clause"] for r in json.loads((tmp_path / "repro" / "conformance.json").read_text())["results"]] == [
        "W-18"]
    # --rerun-failed reruns only what failed
    again = tmp_path / "r2"
    assert cli.main([*common, "--rerun-failed", str(first / "conformance.json"), "--report-dir", str(again)]) == 1
    assert [(r["clause"], r["target"]) for r in json.loads((again / "conformance.json").read_text())["results"]] == [
        ("W-18", "local")]
    # a live waiver: waived, exit 0, and a waiver that matched nothing is reported
    waivers = tmp_path / "waivers.toml"
    waivers.write_text('[[waiver]]\nclause = "W-18"\ntarget = "loc*"\nreason = "escaping fixed in 2.1"\n'
                       'expires = 2999-01-01\n\n[[waiver]]\nclause = "R-8"\nreason = "no reboot here"\n')
    capsys.readouterr()
    assert cli.main([*common, "--clause", "W-18", "--waivers", str(waivers), "--report-dir", str(tmp_path / "r3")]) == 0
    out = capsys.readouterr().out
    assert "waiver matched no failure: R-8" in out
    res = json.loads((tmp_path / "r3" / "conformance.json").read_text())["results"]
    assert [(r["clause"], r["outcome"]) for r in res] == [("W-18", "waived")]
    assert "escaping fixed in 2.1" in res[0]["message"]
    # an expired waiver fails the run
    waivers.write_text('[[waiver]]\nclause = "W-18"\nreason = "was known"\nexpires = 2020-01-01\n')
    assert cli.main([*common, "--clause", "W-18", "--waivers", str(waivers), "--report-dir", str(tmp_path / "r4")]) == 1
    assert "waiver EXPIRED" in capsys.readouterr().out


def test_a_target_that_cannot_be_reached_exits_3(local_host: LabHost, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {local_host.spec.known_host_key}\n")
    url = f"ssh://root@127.0.0.1:{port}"
    rc = cli.main(["conformance", "--target", url, "--key", str(local_host.spec.private_key),
                   "--known-hosts", str(known), "--clause", "W-1", "--report-dir", str(tmp_path / "r")])
    assert rc == 3
    res = json.loads((tmp_path / "r" / "conformance.json").read_text())["results"]
    assert [(r["clause"], r["outcome"]) for r in res] == [("W-1", "error")]
    assert "target setup failed" in res[0]["message"]
    assert "Traceback" not in res[0]["message"]
    assert "exit 3" in capsys.readouterr().err


def test_a_clause_over_its_timeout_is_an_error_and_its_processes_are_killed(local_host: LabHost, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio
    import time

    from jobkit.transport_ssh import SSHTransport

    # a wrapper that hangs, with a process that left its session (closing the SSH channel does not
    # reach it): only the kill of the clause's process tree on the target does
    hangs = tmp_path / "hangs.sh"
    hangs.write_text("#!/bin/sh\nsetsid sh -c 'sleep 3600; :' \"escaped-$1\" </dev/null >/dev/null 2>&1 &\n"
                     "exec sleep 3600\n")
    hangs.chmod(0o755)
    # the session's host by ssh:// (a `local` target of the command's own would be reaped with it)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{local_host.spec.port} {local_host.spec.known_host_key}\n")
    url = f"ssh://{local_host.spec.user}@127.0.0.1:{local_host.spec.port}"
    rc = cli.main(["conformance", "--target", url, "--key", str(local_host.spec.private_key), "--known-hosts",
                   str(known), "--wrapper", str(hangs), "--base-dir", "~/.conf-cli-hang", "--clause", "W-1",
                   "--clause-timeout", "2", "--report-dir", str(tmp_path / "r")])
    assert rc == 3
    res = json.loads((tmp_path / "r" / "conformance.json").read_text())["results"]
    assert [(r["clause"], r["outcome"]) for r in res] == [("W-1", "error")]
    assert "timeout of 2 s" in res[0]["message"]

    async def left() -> str:
        t = SSHTransport(local_host.spec)
        try:
            # (the pattern is put together by the shell: this command's own line does not hold it)
            r = await t.run("p=escaped-; p=\"${p}cf-\"; for d in /proc/[0-9]*; do tr '\\0' ' ' <$d/cmdline "
                            "2>/dev/null; echo; done | grep -F \"$p\" | grep -v '^grep ' || true", timeout=30)
            return r.stdout
        finally:
            await t.close()

    deadline = time.monotonic() + 10
    while (still := asyncio.run(left())).strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert still.strip() == ""


def test_repeat_runs_each_clause_n_times(local_host: LabHost, tmp_path: Path) -> None:
    assert cli.main(["conformance", "--target", "local", "--clause", "W-1", "--repeat", "2",
                     "--report-dir", str(tmp_path / "r")]) == 0
    data = json.loads((tmp_path / "r" / "conformance.json").read_text())
    assert data["repeat"] == 2
    assert [(r["clause"], r["outcome"]) for r in data["results"]] == [("W-1", "pass")]
