"""jobkit's wrapper passes every clause on every offline lab target (containers of their own)."""

from __future__ import annotations

import asyncio

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
