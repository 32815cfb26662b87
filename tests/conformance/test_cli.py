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
