"""What a run's results mean for a CI gate: clause selection by id or glob, reruns of what failed,
waivers, repeated runs (flaky clauses), comparison of two reports, and the exit code."""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jobkit.conformance.clauses import Clause
from jobkit.conformance.runner import ERROR, FAIL, NA, PASS, Result
from jobkit.errors import ConfigError

WAIVED, FLAKY = "waived", "flaky"
OUTCOMES = (PASS, FAIL, NA, ERROR, WAIVED, FLAKY)
FAILING = (FAIL, ERROR, FLAKY)  # what a rerun of failures reruns and what diff counts as failing

# exit codes of `jobkit conformance` (documented in conformance/SPEC.md)
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3


# --- selection ------------------------------------------------------------------------------
def select(clauses: list[Clause], include: list[str] | None, exclude: list[str] | None) -> list[Clause]:
    """The clauses named by ids or globs (``W-1*``), minus those excluded; a pattern that matches
    no clause is a usage error (a typo must not silently check nothing)."""
    ids = [c.id for c in clauses]
    for pattern in [*(include or []), *(exclude or [])]:
        if not fnmatch.filter(ids, pattern):
            raise ConfigError(f"unknown clause {pattern!r}: it matches no clause (clauses: {', '.join(ids)}; "
                              "`jobkit conformance --list` shows them)")
    chosen = [c for c in clauses if not include or any(fnmatch.fnmatchcase(c.id, p) for p in include)]
    chosen = [c for c in chosen if not any(fnmatch.fnmatchcase(c.id, p) for p in exclude or [])]
    if not chosen:
        raise ConfigError("the --clause and --skip-clause options leave no clause to check")
    return chosen


# --- reports --------------------------------------------------------------------------------
def load_report(path: str) -> dict[str, Any]:
    """An earlier run's conformance.json, checked enough to be used."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the report {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not a JSON report (not JSON at line {exc.lineno})") from None
    except ValueError:
        raise ConfigError(f"{path} is not a JSON report (not text)") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or not all(
            isinstance(r, dict) and isinstance(r.get("clause"), str) and isinstance(r.get("target"), str)
            and r.get("outcome") in OUTCOMES for r in results):
        raise ConfigError(f"{path} is not a jobkit conformance JSON report (no list of results with clause, "
                          "target and outcome)")
    return dict(data)


def failed_pairs(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(clause, target) of every result that failed, errored or was flaky in a report."""
    return [(r["clause"], r["target"]) for r in report["results"] if r["outcome"] in FAILING]


# --- waivers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Waiver:
    clause: str
    target: str
    reason: str
    expires: dt.date | None = None

    def matches(self, r: Result) -> bool:
        return fnmatch.fnmatchcase(r.clause, self.clause) and fnmatch.fnmatchcase(r.target, self.target)

    def expired(self, today: dt.date) -> bool:
        return self.expires is not None and self.expires < today

    def describe(self) -> str:
        until = f", until {self.expires.isoformat()}" if self.expires else ""
        return f"{self.clause} on {self.target}{until}: {self.reason}"


def load_waivers(path: str) -> list[Waiver]:
    """A waiver file, TOML (``[[waiver]]`` tables) or YAML (a ``waivers:`` list): each waiver has
    ``clause`` and ``target`` (globs; target defaults to every target), a mandatory ``reason``
    and an optional ``expires`` date (YYYY-MM-DD). Anything malformed is a usage error."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the waiver file {path}: {exc.strerror or exc}") from None
    data: Any
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"waiver file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"waiver file {path} is not valid TOML ({exc}); a .yaml/.yml name reads it as "
                              "YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict) or set(data) - {"waiver", "waivers"}:
        raise ConfigError(f"waiver file {path}: expected a list of waivers under `waiver` (TOML [[waiver]]) or "
                          "`waivers` (YAML)")
    entries = data.get("waiver", data.get("waivers", []))
    if not isinstance(entries, list):
        raise ConfigError(f"waiver file {path}: the waivers must be a list")
    out = []
    for n, e in enumerate(entries, 1):
        where = f"waiver file {path}, waiver {n}"
        if not isinstance(e, dict):
            raise ConfigError(f"{where}: expected a table with clause, target, reason, expires")
        unknown = set(e) - {"clause", "target", "reason", "expires"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        clause, target, reason = e.get("clause"), e.get("target", "*"), e.get("reason")
        if not isinstance(clause, str) or not clause.strip():
            raise ConfigError(f"{where}: `clause` (an id or a glob such as W-1*) is required")
        if not isinstance(target, str) or not target.strip():
            raise ConfigError(f"{where}: `target` must be a target name or glob")
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(f"{where} ({clause}): a `reason` is required (why the failure is accepted)")
        out.append(Waiver(clause.strip(), target.strip(), reason.strip(), _date(e.get("expires"), where)))
    return out


def _date(value: object, where: str) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where}: `expires` must be a date YYYY-MM-DD, not {value!r}")


@dataclass
class WaiverOutcome:
    results: list[Result]
    expired: list[Waiver]  # expired waivers (each fails the run)
    unused: list[Waiver]  # waivers that matched no failure of this run


def apply_waivers(results: list[Result], waivers: list[Waiver], today: dt.date | None = None) -> WaiverOutcome:
    """A failure (FAIL or flaky) that a live waiver covers is ``waived``, its reason in its message;
    an expired waiver waives nothing and fails the run."""
    today = today or dt.datetime.now(dt.UTC).date()
    used: set[Waiver] = set()
    out = []
    for r in results:
        if r.outcome in (FAIL, FLAKY):
            live = [w for w in waivers if w.matches(r) and not w.expired(today)]
            for w in waivers:
                if w.matches(r):
                    used.add(w)
            if live:
                r = replace(r, outcome=WAIVED, message=f"waived ({live[0].describe()}); was {r.outcome}: {r.message}")
            elif any(w.matches(r) for w in waivers):
                r = replace(r, message=f"{r.message} (its waiver expired)")
        out.append(r)
    return WaiverOutcome(out, [w for w in waivers if w.expired(today)], [w for w in waivers if w not in used])


# --- repeats --------------------------------------------------------------------------------
def merge_repeats(runs: list[list[Result]]) -> list[Result]:
    """N runs of the same clauses as one: a clause whose outcome varied between runs is ``flaky``."""
    first = runs[0]
    out = []
    for i, r in enumerate(first):
        same = [run[i] for run in runs if i < len(run)]
        outcomes = [x.outcome for x in same]
        if len(set(outcomes)) == 1:
            bad = next((x for x in same if x.outcome != PASS), r)
            out.append(replace(bad, seconds=max(x.seconds for x in same)))
            continue
        worst = next(x for x in same if x.outcome != PASS)
        tally = ", ".join(f"{o} {outcomes.count(o)}x" for o in dict.fromkeys(outcomes))
        out.append(replace(worst, outcome=FLAKY, seconds=max(x.seconds for x in same),
                           message=f"the outcome varied over {len(same)} runs ({tally}); a differing run said: "
                                   f"{worst.message}"))
    return out


# --- the exit code --------------------------------------------------------------------------
def exit_code(results: list[Result], expired: list[Waiver]) -> int:
    """1 when a MUST clause fails (or any clause is flaky, or a waiver expired), else 3 when a
    result is an error (a target could not be started or reached, a fault not set up, a clause
    over its timeout: nothing is known), else 0."""
    if expired or any(r.outcome == FLAKY or (r.must and r.outcome == FAIL) for r in results):
        return EXIT_FAIL
    if any(r.outcome == ERROR for r in results):
        return EXIT_INFRA
    return EXIT_OK


# --- diff of two reports --------------------------------------------------------------------
@dataclass
class Diff:
    new_failures: list[dict[str, Any]]
    fixed: list[dict[str, Any]]
    still_failing: list[dict[str, Any]]
    newly_na: list[dict[str, Any]]
    waived: list[dict[str, Any]]

    def sections(self) -> list[tuple[str, list[dict[str, Any]]]]:
        return [("new failures", self.new_failures), ("fixed", self.fixed), ("still failing", self.still_failing),
                ("newly n/a", self.newly_na), ("waived", self.waived)]


def diff(old: dict[str, Any], new: dict[str, Any]) -> Diff:
    before = {(r["clause"], r["target"]): r for r in old["results"]}
    d = Diff([], [], [], [], [])
    for r in new["results"]:
        o = before.get((r["clause"], r["target"]))
        was_failing = o is not None and o["outcome"] in FAILING
        if r["outcome"] in FAILING:
            (d.still_failing if was_failing else d.new_failures).append(r)
        elif r["outcome"] == PASS and was_failing:
            d.fixed.append(r)
        elif r["outcome"] == NA and (o is None or o["outcome"] != NA):
            d.newly_na.append(r)
        if r["outcome"] == WAIVED:
            d.waived.append(r)
    return d


def diff_text(d: Diff) -> str:
    lines = []
    for title, rs in d.sections():
        lines.append(f"{title}: {len(rs)}")
        for r in rs:
            lines.append(f"  {r['clause']} on {r['target']}: {r['outcome']}" + (f": {r['message'][:200]}"
                                                                               if r.get("message") else ""))
    return "\n".join(lines)
