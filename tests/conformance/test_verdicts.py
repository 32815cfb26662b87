"""Clean verdicts on wrappers that deviate from the protocol: every clause on every deviant wrapper
ends pass, FAIL with a sentence, n/a with a reason, or error (the suite or target broke), and no
message is a Python exception's text."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from jobkit import wrapper_dir
from jobkit.conformance.clauses import CLAUSES
from jobkit.conformance.runner import ERROR, FAIL, NA, PASS, Result, TargetSpec, run_target
from jobkit.lab import Lab, LabHost
from jobkit.transport_ssh import SSHTransport
from tests.broken_wrappers import DEVIANTS, write_deviant
from tests.lab.test_hygiene import processes_mentioning

pytestmark = pytest.mark.slow
SCHEMA = wrapper_dir() / "server_schema.sql"
# what a message must never hold: a Python exception's name or text
PYTHON_TEXT = re.compile(r"Traceback|Error:|Exception|StopIteration|KeyError|TypeError|ValueError|IndexError|"
                         r"AttributeError|JSONDecodeError|coroutine raised|Expecting value|object has no attribute")


def run_deviants(lab: Lab, tmp_path: Path) -> dict[str, list[Result]]:
    # each wrapper on a `local` target of its own: the clauses that make the host unreachable
    # (R-7) must not take the other wrappers' host away
    hosts = {d.name: lab.start("local", fresh=True) for d in DEVIANTS}

    async def one(name: str, wrapper: Path) -> list[Result]:
        host = hosts[name]
        t = SSHTransport(host.spec)
        try:  # short waits: a deviant wrapper's answer comes at once or never
            return await run_target(TargetSpec(host.target, t, host), wrapper=wrapper, schema=SCHEMA,
                                    base_dir=f"~/.conf-deviant-{name}", clauses=CLAUSES, progress=lambda *_: None,
                                    clause_timeout=2 if name == "hangs" else 30, patience=0.05)
        finally:
            await t.close()

    async def go() -> list[list[Result]]:
        return await asyncio.gather(*(one(d.name, write_deviant(d, tmp_path)) for d in DEVIANTS))

    return dict(zip((d.name for d in DEVIANTS), asyncio.run(go()), strict=True))


def test_every_clause_gives_a_clean_verdict_on_protocol_deviant_wrappers(jobkit_lab: Lab, tmp_path: Path) -> None:
    per_wrapper = run_deviants(jobkit_lab, tmp_path)
    report = "\n".join(f"{w} {r.clause} {r.outcome}: {r.message}" for w, rs in per_wrapper.items() for r in rs)
    print(report)
    for wrapper, results in per_wrapper.items():
        assert [r.clause for r in results] == [c.id for c in CLAUSES], wrapper
        for r in results:
            where = f"{wrapper} {r.clause} {r.outcome}: {r.message}"
            assert r.outcome in (PASS, FAIL, NA, ERROR), where
            assert not PYTHON_TEXT.search(r.message), where
            assert "internal error of the suite" not in r.message, where
            if r.outcome in (FAIL, NA):
                assert len(r.message) > 20, where  # a sentence, not a bare value
            if r.outcome != PASS:
                assert r.evidence or r.outcome == NA, where
    # each deviation is caught, by the clause it breaks; a wrapper that hangs is stopped by the clause timeout
    outcome = {(w, r.clause): r for w, rs in per_wrapper.items() for r in rs}
    for wrapper in set(per_wrapper) - {"bash_no_traps"}:
        want = {"no_pid": PASS, "hangs": ERROR}.get(wrapper, FAIL)
        assert outcome[(wrapper, "W-1")].outcome == want, (wrapper, outcome[(wrapper, "W-1")].message)
    assert outcome[("no_pid", "W-8")].outcome == FAIL
    assert "records no pid" in outcome[("no_pid", "W-8")].message
    assert "is empty" in outcome[("empty_state_file", "W-1")].message
    assert "is an array" in outcome[("array_state_file", "W-1")].message
    assert "there is no state file" in outcome[("no_state_file", "W-1")].message
    assert "database row" in outcome[("db_never_updated", "W-1")].message
    assert [outcome[("bash_no_traps", c)].outcome for c in ("W-3", "W-4", "W-8", "W-17")] == [FAIL] * 4
    # (an `error` elsewhere can only be the machine's: a fault not set up in time on a loaded host)
    assert {r.outcome for r in per_wrapper["hangs"]} <= {ERROR, FAIL, PASS, NA}
    assert any("were killed" in r.message for r in per_wrapper["hangs"])


def test_a_clause_that_fails_early_leaves_no_job_running_on_the_host(local_host: LabHost, tmp_path: Path) -> None:
    # W-16's job waits for a go file; a wrapper that never says `running` fails the clause before
    # the go file was made: the job must still end (it ran for the rest of the session before)
    wrapper = write_deviant(next(d for d in DEVIANTS if d.name == "no_state_file"), tmp_path)
    base = f"~/.conf-leak-{tmp_path.name}"

    async def go() -> list[Result]:
        t = SSHTransport(local_host.spec)
        try:
            return await run_target(TargetSpec(local_host.target, t, local_host), wrapper=wrapper, schema=SCHEMA,
                                    base_dir=base, clauses=[c for c in CLAUSES if c.id == "W-16"],
                                    progress=lambda *_: None, patience=0.05)
        finally:
            await t.close()

    [result] = asyncio.run(go())
    assert result.outcome in (FAIL, NA), result.message
    mark = Path(f"/.conf-leak-{tmp_path.name}")  # in the job's command line (the go file's path)
    deadline = time.monotonic() + 10
    while processes_mentioning(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_mentioning(mark), "processes of the clause's job are still running:\n" + "\n".join(
        processes_mentioning(mark))
