"""The suite has teeth: each broken wrapper fails the clause that names its bug, and jobkit's
own wrapper passes every clause (on `local` here; on every lab target in test_lab_targets)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jobkit import wrapper_dir
from jobkit.conformance.clauses import CLAUSES
from jobkit.conformance.runner import FAIL, NA, PASS, Result, TargetSpec, run_target
from jobkit.lab import LabHost
from jobkit.transport_ssh import SSHTransport
from tests.broken_wrappers import BUGS, write

pytestmark = pytest.mark.slow
SCHEMA = wrapper_dir() / "server_schema.sql"
CASES = [(b.name, b.clause) for b in BUGS]



def check(host: LabHost, wrapper: Path, clause_ids: list[str], base_dir: str) -> list[Result]:
    async def go() -> list[Result]:
        t = SSHTransport(host.spec)
        try:
            return await run_target(TargetSpec(host.target, t, host), wrapper=wrapper, schema=SCHEMA,
                                    base_dir=base_dir, clauses=[c for c in CLAUSES if c.id in clause_ids],
                                    progress=lambda *_: None)
        finally:
            await t.close()

    return asyncio.run(go())


@pytest.mark.parametrize(("name", "clause"), CASES, ids=[c[0] for c in CASES])
def test_each_broken_wrapper_fails_the_clause_that_names_its_bug(local_host: LabHost, name: str, clause: str,
                                                                tmp_path: Path) -> None:
    path = write(next(b for b in BUGS if b.name == name), tmp_path)
    header = path.read_text().splitlines()[2]
    assert clause in header, "the file says which clause must catch it"
    broken = check(local_host, path, [clause], f"~/.conf-{name}")
    assert [(r.clause, r.outcome) for r in broken] == [(clause, FAIL)], broken[0].message
    assert broken[0].evidence, "a failure comes with its evidence"
    ours = check(local_host, wrapper_dir() / "job_wrapper.sh", [clause], f"~/.conf-ours-{name}")
    assert [(r.clause, r.outcome) for r in ours] == [(clause, PASS)], ours[0].message


def test_our_wrapper_passes_every_clause_on_local(local_host: LabHost) -> None:
    results = check(local_host, wrapper_dir() / "job_wrapper.sh", [c.id for c in CLAUSES], "~/.conf-all")
    bad = [(r.clause, r.outcome, r.message) for r in results if r.outcome not in (PASS, NA)]
    assert bad == []
    not_applicable = {r.clause for r in results if r.outcome == NA}
    assert not_applicable == {"R-8"}  # a reboot cannot be simulated on this machine's own kernel
