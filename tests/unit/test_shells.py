"""`jobkit shells`: the bats matrix runner, on real bats and a real shell."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobkit import cli, shells

pytestmark = pytest.mark.unit


def test_a_real_scenario_runs_and_passes_on_dash(tmp_path: Path) -> None:
    run = shells.run_shell("dash", shells.repo_root(), tmp_path, "exit N is recorded")
    assert run.error is None, run.output
    assert run.results == {"exit N is recorded failed with that code and the wrapper exits N": "ok"}
    assert run.passed


def test_zsh_runs_as_sh_through_a_symlink(tmp_path: Path) -> None:
    argv = shells._command("zsh-as-sh", tmp_path)
    assert argv is not None
    assert Path(argv[0]).name == "sh"
    assert Path(argv[0]).resolve().name.startswith("zsh")


def test_a_failing_scenario_is_reported_as_fail() -> None:
    good = shells.ShellRun("dash", {"a": "ok", "b": "ok"})
    bad = shells.ShellRun("posh", {"a": "ok", "b": "FAIL"})
    missing = shells.ShellRun("nosuch", error="not installed")
    table = shells.render([good, bad, missing])
    assert not bad.passed
    assert good.passed
    assert not missing.passed
    row_b = next(line for line in table.splitlines() if line.startswith("b "))
    assert row_b.split()[1:] == ["ok", "FAIL", "n/a"]
    assert "posh         FAIL" in table
    assert "SKIPPED: not installed" in table


def test_tap_lines_are_parsed_including_skips() -> None:
    assert shells._TAP.match("ok 3 a name")
    m = shells._TAP.match("ok 4 other # skip no tmux")
    assert m
    assert m.group(3) == "other"
    assert m.group(4) == "skip"
    m = shells._TAP.match("not ok 5 broken")
    assert m
    assert m.group(1) == "not ok"


def test_unknown_shell_is_a_clear_error_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["shells", "--shell", "csh"]) == 2
    err = capsys.readouterr().err
    assert "unknown shell(s) csh" in err
    assert "Traceback" not in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: jobkit" in capsys.readouterr().out
