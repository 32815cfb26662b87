"""The CI gate's pieces without a target: selection, waivers, repeats, exit codes, diff, and the
report formats (JSON against its shipped schema, JUnit properties, GitHub annotations)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobkit import cli
from jobkit.conformance import gate
from jobkit.conformance.clauses import CLAUSES
from jobkit.conformance.report import as_json, github_annotations, github_summary, junit, schema_path, terminal
from jobkit.conformance.runner import ERROR, FAIL, NA, PASS, Result

pytestmark = pytest.mark.unit
TODAY = dt.date(2026, 6, 1)


def res(clause: str, target: str, outcome: str, must: bool = True, message: str = "") -> Result:
    return Result(clause, f"title of {clause}", must, target, outcome, 0.5, message or f"{outcome} message",
                  ["## evidence"], ["echo ran"], f"jobkit conformance --target {target} --clause {clause}")


def test_clause_selection_by_ids_and_globs() -> None:
    ids = [c.id for c in gate.select(CLAUSES, ["W-1*"], None)]
    assert ids == ["W-1", *(f"W-{n}" for n in range(10, 20))]
    assert [c.id for c in gate.select(CLAUSES, ["W-1*", "R-1"], ["W-1?"])] == ["W-1", "R-1"]
    assert len(gate.select(CLAUSES, None, ["R-*"])) == len([c for c in CLAUSES if c.id.startswith("W-")])
    for include, exclude in ((["W-99"], None), (None, ["Q*"]), (["W-1"], ["W-1"])):
        with pytest.raises(gate.ConfigError):
            gate.select(CLAUSES, include, exclude)


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_waiver_files_in_toml_and_yaml(tmp_path: Path) -> None:
    toml = write(tmp_path, "w.toml", '[[waiver]]\nclause = "W-1*"\ntarget = "busybox"\nreason = "known"\n'
                                     'expires = 2026-12-31\n\n[[waiver]]\nclause = "R-8"\nreason = "no reboot"\n')
    yaml = write(tmp_path, "w.yaml", "waivers:\n  - clause: W-1*\n    target: busybox\n    reason: known\n"
                                     "    expires: 2026-12-31\n  - clause: R-8\n    reason: no reboot\n")
    for path in (toml, yaml):
        assert gate.load_waivers(path) == [gate.Waiver("W-1*", "busybox", "known", dt.date(2026, 12, 31)),
                                           gate.Waiver("R-8", "*", "no reboot", None)]


@pytest.mark.parametrize(("name", "text", "says"), [
    ("a.toml", '[[waiver]]\nclause = "W-1"\n', "reason"),
    ("b.toml", '[[waiver]]\nclause = "W-1"\nreason = ""\n', "reason"),
    ("c.toml", '[[waiver]]\nreason = "x"\n', "clause"),
    ("d.toml", '[[waiver]]\nclause = "W-1"\nreason = "x"\nexpires = "soon"\n', "expires"),
    ("e.toml", '[[waiver]]\nclause = "W-1"\nreason = "x"\nowner = "me"\n', "unknown key"),
    ("f.toml", "[[waiver]\n", "not valid TOML"),
    ("g.yaml", "waivers: [clause: W-1\n", "not valid YAML"),
    ("h.yaml", "- clause: W-1\n  reason: x\n", "expected a list of waivers"),
    ("i.yaml", "waivers: {clause: W-1}\n", "must be a list"),
])
def test_a_malformed_waiver_file_is_a_usage_error_before_anything_starts(
        tmp_path: Path, name: str, text: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(gate.ConfigError, match=says):
        gate.load_waivers(path)
    # from the command line: exit 2, one line, no target started (an unknown target would be exit 2 too,
    # so the target is a valid one that is never reached)
    assert cli.main(["conformance", "--target", "local", "--waivers", path,
                     "--report-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jobkit: error: ")
    assert says in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_waivers_waive_failures_expire_and_report_what_they_did_not_match() -> None:
    results = [res("W-1", "busybox", FAIL), res("W-2", "busybox", FAIL), res("W-1", "local", FAIL),
               res("W-3", "local", ERROR), res("W-4", "local", PASS)]
    live = gate.Waiver("W-1", "busy*", "known on BusyBox", dt.date(2026, 12, 31))
    old = gate.Waiver("W-2", "*", "was known", dt.date(2026, 1, 1))
    unused = gate.Waiver("R-*", "*", "never matches")
    out = gate.apply_waivers(results, [live, old, unused], TODAY)
    assert [r.outcome for r in out.results] == ["waived", FAIL, FAIL, ERROR, PASS]
    assert "known on BusyBox" in out.results[0].message
    assert "FAIL message" in out.results[0].message
    assert "expired" in out.results[1].message
    assert out.expired == [old]
    assert out.unused == [unused]
    assert gate.exit_code(out.results, out.expired) == 1
    only_live = gate.apply_waivers([res("W-1", "busybox", FAIL)], [live], TODAY)
    assert gate.exit_code(only_live.results, only_live.expired) == 0


def test_exit_codes() -> None:
    assert gate.exit_code([res("W-1", "t", PASS), res("W-2", "t", NA)], []) == 0
    assert gate.exit_code([res("W-1", "t", FAIL, must=False)], []) == 0  # a SHOULD clause does not gate
    assert gate.exit_code([res("W-1", "t", FAIL), res("W-2", "t", ERROR)], []) == 1
    assert gate.exit_code([res("W-1", "t", PASS), res("W-2", "t", ERROR, must=False)], []) == 3
    assert gate.exit_code([res("W-1", "t", gate.FLAKY, must=False)], []) == 1


@given(st.lists(st.lists(st.sampled_from([PASS, FAIL, NA, ERROR]), min_size=1, max_size=4), min_size=1,
                max_size=4))
def test_repeats_are_flaky_exactly_when_the_outcome_varied(outcomes: list[list[str]]) -> None:
    width = min(len(o) for o in outcomes)
    runs = [[res(f"W-{i}", "t", outcomes[i][n]) for i in range(len(outcomes))] for n in range(width)]
    merged = gate.merge_repeats(runs)
    for i, r in enumerate(merged):
        seen = {outcomes[i][n] for n in range(width)}
        assert r.outcome == (gate.FLAKY if len(seen) > 1 else next(iter(seen)))
        if r.outcome == gate.FLAKY:
            assert f"over {width} runs" in r.message


def report(tmp_path: Path, name: str, results: list[Result]) -> str:
    path = tmp_path / name
    path.write_text(as_json(results, {"wrapper": "w", "schema": "s", "base_dir": "b", "targets": ["t"],
                                      "seconds": 1.0, "exit_code": gate.exit_code(results, []), "repeat": 1}))
    return str(path)


def test_diff_of_two_reports_gates_on_new_failures_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = report(tmp_path, "old.json", [res("W-1", "t", PASS), res("W-2", "t", FAIL), res("W-3", "t", FAIL),
                                        res("W-4", "t", PASS), res("W-5", "t", PASS)])
    new = report(tmp_path, "new.json", [res("W-1", "t", FAIL), res("W-2", "t", PASS), res("W-3", "t", ERROR),
                                        res("W-4", "t", NA), res("W-5", "t", "waived")])
    d = gate.diff(gate.load_report(old), gate.load_report(new))
    assert [[r["clause"] for r in rs] for _, rs in d.sections()] == [["W-1"], ["W-2"], ["W-3"], ["W-4"], ["W-5"]]
    assert cli.main(["conformance", "diff", old, new]) == 1
    out = capsys.readouterr().out
    assert "new failures: 1" in out
    assert "W-1 on t: FAIL" in out
    assert cli.main(["conformance", "diff", new, new]) == 0
    assert cli.main(["conformance", "diff", old, str(tmp_path / "missing.json")]) == 2
    assert cli.main(["conformance", "diff", old, write(tmp_path, "bad.json", '{"results": [{}]}')]) == 2
    assert cli.main(["conformance", "diff", old]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_the_json_report_validates_against_its_shipped_schema(tmp_path: Path) -> None:
    schema = json.loads(schema_path().read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    results = [res("W-1", "t", o) for o in (PASS, FAIL, NA, ERROR, "waived", "flaky")]
    data = json.loads(Path(report(tmp_path, "r.json", results)).read_text())
    jsonschema.validate(data, schema)
    assert data["schema_version"] == 1
    data["results"][0]["outcome"] = "ERROR"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


def test_junit_carries_skip_reasons_and_clause_target_level_properties() -> None:
    root = ET.fromstring(junit([res("W-1", "t", NA, message="cannot be made here"), res("W-2", "t", FAIL),
                                res("W-3", "t", PASS, must=False)], {}))
    cases = root.findall(".//testcase")
    props = [{p.get("name"): p.get("value") for p in c.iter("property")} for c in cases]
    assert [(p["clause"], p["target"], p["level"]) for p in props] == [("W-1", "t", "MUST"), ("W-2", "t", "MUST"),
                                                                       ("W-3", "t", "SHOULD")]
    skipped = cases[0].find("skipped")
    assert skipped is not None
    assert "cannot be made here" in (skipped.get("message") or "")
    failure = cases[1].find("failure")
    assert failure is not None
    assert "rerun: jobkit conformance --target t --clause W-2" in (failure.text or "")


def test_github_annotations_one_per_failed_must_clause_and_a_markdown_matrix() -> None:
    results = [res("W-1", "a-very-long-target-name-that-is-never-cut", FAIL, message="expected x,\nfound y"),
               res("W-2", "a-very-long-target-name-that-is-never-cut", FAIL, must=False),
               res("W-3", "a-very-long-target-name-that-is-never-cut", PASS)]
    lines = github_annotations(results, {}).splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("::error title=conformance W-1 FAIL on a-very-long")
    assert "%0A" in lines[0]
    assert "\n" not in lines[0]
    md = github_summary(results, {}, {"exit_code": 1})
    assert "| W-1 | MUST |" in md
    assert "a-very-long-target-name-that-is-never-cut" in md
    assert "a-very-long-target-name-that-is-never-cut" in terminal(results, {}).splitlines()[0]


def test_the_live_progress_shows_done_of_total_and_failures_per_target() -> None:
    import io

    from rich.console import Console

    from jobkit.conformance.cli import LiveProgress

    out = io.StringIO()
    long_name = "debian-bookworm-with-a-long-name"
    live = LiveProgress([long_name, "local"], 3, console=Console(file=out, width=160, force_terminal=False))
    live.start()
    live.update(long_name, "W-1", None)
    live.update(long_name, "W-1", res("W-1", long_name, FAIL, message="expected x, found y"))
    live.update(long_name, "W-2", res("W-2", long_name, PASS))
    live.update("local", "W-1", res("W-1", "local", NA))
    live.stop()
    text = out.getvalue()
    assert f"{long_name}: W-1 FAIL: expected x, found y" in text
    final = text.splitlines()[-2:]
    assert any(long_name in line and "2/3" in line and "1 failed" in line for line in final), final
    assert any(line.startswith("local") and "1/3" in line and "0 failed" in line for line in final), final
