"""jobkit's wrapper passes every clause on every offline lab target (containers of their own)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jobkit import wrapper_dir
from jobkit.conformance.runner import NA, PASS, Result, TargetSpec, run_all
from jobkit.lab import Lab, offline_targets
from jobkit.transport_ssh import SSHTransport

pytestmark = [pytest.mark.container, pytest.mark.destructive]


def test_every_clause_passes_on_every_offline_target() -> None:
    with Lab() as lab:
        hosts = [lab.start(t, fresh=True) for t in offline_targets()]
        targets = [TargetSpec(h.target, SSHTransport(h.spec), h) for h in hosts]

        async def go() -> list[Result]:
            try:
                return await run_all(targets, wrapper=wrapper_dir() / "job_wrapper.sh",
                                     schema=wrapper_dir() / "server_schema.sql", base_dir=None, clause_ids=None,
                                     progress=lambda *_: None, parallel=2)
            finally:
                for t in targets:
                    await t.transport.close()

        results = asyncio.run(go())
    bad = [(r.target, r.clause, r.outcome, r.message[:200]) for r in results if r.outcome not in (PASS, NA)]
    assert bad == []
    assert [r for r in results if r.outcome == NA] == []  # every fault can be made in a lab container
    assert {r.target for r in results} == set(offline_targets())


@pytest.mark.slow
def test_the_ci_gate_on_a_lab_target(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The CI paths from the command line on a lab container: glob selection, GitHub annotations
    and step summary, a waiver, the repro line, --rerun-failed and diff against the first run."""
    import json

    from jobkit import cli
    from tests.broken_wrappers import BUGS, write

    broken = write(next(b for b in BUGS if b.name == "unescaped_json"), tmp_path)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    common = ["conformance", "--target", "busybox", "--wrapper", str(broken)]
    assert cli.main([*common, "--clause", "W-1?", "--skip-clause", "W-1[0-7]", "--skip-clause", "W-19",
                     "--report-dir", str(tmp_path / "r1")]) == 1
    out = capsys.readouterr().out
    assert [line.split("::")[1] for line in out.splitlines() if line.startswith("::error")] == [
        "error title=conformance W-18 FAIL on busybox (BusyBox userland%2C Alpine role)"]
    assert "| W-18 | MUST |" in summary.read_text()
    first = json.loads((tmp_path / "r1" / "conformance.json").read_text())
    assert [(r["clause"], r["outcome"]) for r in first["results"]] == [("W-18", "FAIL")]
    assert first["results"][0]["repro"].startswith("jobkit conformance --target busybox --clause W-18 ")
    waivers = tmp_path / "waivers.yaml"
    waivers.write_text("waivers:\n  - clause: W-18\n    target: busy*\n    reason: escaping fixed in 2.1\n")
    assert cli.main([*common, "--rerun-failed", str(tmp_path / "r1" / "conformance.json"), "--waivers",
                     str(waivers), "--report-dir", str(tmp_path / "r2")]) == 0
    second = json.loads((tmp_path / "r2" / "conformance.json").read_text())
    assert [(r["clause"], r["outcome"]) for r in second["results"]] == [("W-18", "waived")]
    assert cli.main(["conformance", "diff", str(tmp_path / "r1" / "conformance.json"),
                     str(tmp_path / "r2" / "conformance.json")]) == 0
    assert "waived: 1" in capsys.readouterr().out
