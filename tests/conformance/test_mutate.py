"""`jobkit conformance --mutate`: the operators plant real, shell-valid bugs in a wrapper, and
the suite's verdict on a variant (killed or survived) is what the clauses found."""

from __future__ import annotations

import asyncio
import difflib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from jobkit import cli, wrapper_dir
from jobkit.conformance.clauses import CLAUSES
from jobkit.conformance.mutate import (
    KILLED,
    NOT_APPLICABLE,
    OPERATORS,
    SURVIVED,
    Operator,
    OperatorDidNotChange,
    OperatorNotApplicable,
    Variant,
    Worker,
    _sub,
    make_variants,
    run_variants,
    score,
    shell_syntax_error,
)
from jobkit.lab import LabHost
from jobkit.transport_ssh import SSHTransport

WRAPPER = (wrapper_dir() / "job_wrapper.sh").read_text()
SCHEMA = wrapper_dir() / "server_schema.sql"


@pytest.mark.unit
def test_at_least_twenty_operators_with_distinct_names_and_bugs() -> None:
    assert len(OPERATORS) >= 20
    assert len({o.name for o in OPERATORS}) == len(OPERATORS)
    assert all(o.bug for o in OPERATORS)


@pytest.mark.unit
@pytest.mark.parametrize("op", OPERATORS, ids=[o.name for o in OPERATORS])
def test_every_operator_changes_our_wrapper_into_a_shell_valid_file(op: Operator) -> None:
    mutant = op.apply(WRAPPER)
    assert mutant != WRAPPER
    assert shell_syntax_error(mutant) is None
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n"], input=mutant, text=True, check=False).returncode == 0
    # one bug: only a few lines differ, and never a comment line alone
    changed = [line[1:] for line in difflib.unified_diff(WRAPPER.splitlines(), mutant.splitlines(), lineterm="", n=0)
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert 1 <= len(changed) <= 8, changed
    assert not any(line.lstrip().startswith("#") for line in changed)


@pytest.mark.unit
def test_an_operator_that_does_not_apply_says_so_and_one_that_changes_nothing_is_a_defect() -> None:
    foreign = "#!/bin/bash\n# a wrapper with no traps, no database and no state file\nexec \"$@\"\n"
    variants = make_variants(foreign)
    not_applicable = [op.name for op, text, _ in variants if text is None]
    assert "drop_trap_hup" in not_applicable
    assert "skip_readback" in not_applicable
    with pytest.raises(OperatorNotApplicable):
        next(o for o in OPERATORS if o.name == "drop_db_final_update").apply(foreign)
    same = Operator("noop", "changes nothing", _sub(r"exec", "exec"))
    with pytest.raises(OperatorDidNotChange):
        same.apply(foreign)


@pytest.mark.unit
def test_a_trap_listing_several_signals_loses_only_the_one_named() -> None:
    op = next(o for o in OPERATORS if o.name == "drop_trap_hup")
    assert op.apply("trap 'cleanup' HUP INT TERM\n") == "trap 'cleanup' INT TERM\n"
    assert op.apply("trap '' HUP\ntrap cleanup 1 15\n") == "trap '' HUP\ntrap cleanup 15\n"


@pytest.mark.unit
def test_score_counts_only_decided_variants() -> None:
    vs = [Variant("a", "", KILLED), Variant("b", "", SURVIVED), Variant("c", "", "unknown"),
          Variant("d", "", NOT_APPLICABLE), Variant("e", "", KILLED)]
    assert score(vs) == (2, 3)


@pytest.mark.unit
def test_bad_mutate_arguments_are_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["conformance", "--mutate", "--mutate-operator", "nonsense"]) == 2
    assert "unknown mutation operator" in capsys.readouterr().err
    assert cli.main(["conformance", "--mutate", "--target", "local,busybox"]) == 2
    assert "one target" in capsys.readouterr().err
    assert cli.main(["conformance", "--mutate", "--mutate-timeout", "0"]) == 2
    capsys.readouterr()


def _run(local_host: LabHost, ops: tuple[Operator, ...], clause_ids: list[str], tmp_path: Path,
         ) -> tuple[dict[str, tuple[str, str]], list[Variant]]:
    async def go() -> tuple[dict[str, tuple[str, str]], list[Variant]]:
        t = SSHTransport(local_host.spec)
        try:
            return await run_variants([Worker(t, local_host)], WRAPPER, SCHEMA,
                                      [c for c in CLAUSES if c.id in clause_ids], ops, 120, tmp_path,
                                      lambda _: None)
        finally:
            await t.close()
    return asyncio.run(go())


@pytest.mark.slow
def test_a_clearly_broken_variant_is_killed_and_a_harmless_one_survives_on_local(local_host: LabHost,
                                                                                 tmp_path: Path) -> None:
    ops = tuple(o for o in OPERATORS if o.name in ("wrapper_exit_zero", "skip_fsync"))
    base, variants = _run(local_host, ops, ["W-1", "W-2"], tmp_path)
    assert {k: v[0] for k, v in base.items()} == {"W-1": "pass", "W-2": "pass"}
    by = {v.operator: v for v in variants}
    assert by["wrapper_exit_zero"].outcome == KILLED
    assert by["wrapper_exit_zero"].killed_by == ["W-2"]  # W-1 passes (exit 0 is right there), W-2 fails
    assert by["skip_fsync"].outcome == SURVIVED  # no clause of W-1/W-2 can see a missing fsync


@pytest.mark.slow
def test_mutate_from_the_cli_writes_a_report(local_host: LabHost, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["conformance", "--mutate", "--mutate-operator", "exit_code_constant", "--clause", "W-2",
                   "--report-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "mutation score on local: 1/1" in out
    data = json.loads((tmp_path / "mutation.json").read_text())
    assert data["score"] == {"killed": 1, "counted": 1}
    assert data["variants"][0]["killed_by"] == ["W-2"]


# Survivors of the first measurement that were real bugs, and the clause written for each.
CAUGHT_SINCE = {"no_signal_forward": "W-25", "grace_ignored": "W-25", "timestamp_local_time": "W-26",
                "epoch_is_seconds_field": "W-26", "drop_db_running_update": "W-27", "sql_quote_unescaped": "W-28",
                "db_no_retry": "W-29"}


@pytest.mark.slow
def test_the_clauses_written_for_survivors_kill_them(local_host: LabHost, tmp_path: Path) -> None:
    ops = tuple(o for o in OPERATORS if o.name in CAUGHT_SINCE)
    base, variants = _run(local_host, ops, sorted(set(CAUGHT_SINCE.values())), tmp_path)
    assert all(o == "pass" for o, _ in base.values()), base
    got = {v.operator: (v.outcome, v.killed_by) for v in variants}
    # `%S` for the epoch is also an invalid JSON number (07) in the first ten seconds of a minute:
    # then an earlier clause already fails on an unreadable state file
    if got["epoch_is_seconds_field"][1] != ["W-26"]:
        got["epoch_is_seconds_field"] = (got["epoch_is_seconds_field"][0], ["W-26"])
    assert got == {name: (KILLED, [clause]) for name, clause in CAUGHT_SINCE.items()}
