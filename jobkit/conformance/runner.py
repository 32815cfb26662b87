"""Run the clauses on targets: set up each target, run every clause, collect outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobkit.conformance.clauses import CLAUSES, Clause, NotApplicable
from jobkit.conformance.context import Ctx
from jobkit.faults import FaultNotApplicable, FaultSetupError, HostHandle
from jobkit.remote import base_dir_word
from jobkit.transport import Transport

DEFAULT_BASE = "~/.jobkit-conformance"
PASS, FAIL, NA, ERROR = "pass", "FAIL", "n/a", "ERROR"


@dataclass
class Result:
    clause: str
    title: str
    must: bool
    target: str
    outcome: str
    seconds: float
    message: str = ""
    evidence: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"clause": self.clause, "title": self.title, "must": self.must, "target": self.target,
                "outcome": self.outcome, "seconds": round(self.seconds, 2), "message": self.message,
                "evidence": self.evidence}


@dataclass
class TargetSpec:
    """One target to check: a name, a transport, and the lab handle when it is a lab target."""

    name: str
    transport: Transport
    lab: Any = None
    label: str = ""


Progress = Callable[[str, str, Result | None], None]


async def setup_target(t: Transport, base_dir: str, wrapper: Path, schema: Path) -> tuple[str, str]:
    """Upload the wrapper and the schema, create the database and the directories; return the
    base directory and the wrapper path, resolved on the host."""
    b = base_dir_word(base_dir)
    r = await t.run(f"b={b}; mkdir -p \"$b/jobs\" \"$b/.conformance\" && cd \"$b\" && pwd -P", check=True, timeout=15)
    base_abs = r.stdout.strip().splitlines()[-1]
    qb = shlex.quote(base_abs)
    wrapper_text, schema_text = await asyncio.to_thread(wrapper.read_text), await asyncio.to_thread(schema.read_text)
    await t.run(f"cat >{qb}/.conformance/job_wrapper.sh && chmod 755 {qb}/.conformance/job_wrapper.sh",
                stdin=wrapper_text, check=True, timeout=15)
    await t.run(f"cat >{qb}/.conformance/schema.sql", stdin=schema_text, check=True, timeout=15)
    await t.run(f"sqlite3 -cmd '.timeout 5000' {qb}/server.db <{qb}/.conformance/schema.sql >/dev/null 2>&1; "
                f"sqlite3 -cmd '.timeout 5000' {qb}/server.db 'SELECT count(*) FROM jobs' >/dev/null", check=True,
                timeout=15)
    return base_abs, f"{base_abs}/.conformance/job_wrapper.sh"


async def check_clause(c: Clause, ctx: Ctx, timeout: float = 180) -> tuple[str, str]:
    """One clause on one target: its outcome and message. A fault that could not be made is
    n/a, one that could not be set up (or undone) is the suite's ERROR, never the wrapper's FAIL."""
    try:
        await asyncio.wait_for(c.check(ctx), timeout=timeout)
        return PASS, ""
    except (NotApplicable, FaultNotApplicable) as exc:
        return NA, str(exc)
    except FaultSetupError as exc:
        ctx.evidence.add("fault setup", traceback.format_exc()[-3000:])
        return ERROR, f"the suite's fault could not be set up or undone (not the wrapper's failure): {exc}"
    except AssertionError as exc:
        return FAIL, str(exc) or "assertion failed"
    except TimeoutError:
        return FAIL, f"clause did not finish within {timeout:g} s"
    except Exception as exc:
        ctx.evidence.add("traceback", traceback.format_exc()[-3000:])
        return FAIL, f"{type(exc).__name__}: {exc}"


async def run_target(target: TargetSpec, *, wrapper: Path, schema: Path, base_dir: str | None,
                     clauses: list[Clause], progress: Progress, grace: int = 2) -> list[Result]:
    results: list[Result] = []
    host = HostHandle(target.transport, None, target.lab)
    try:
        base_abs, wrapper_abs = await setup_target(target.transport, base_dir or DEFAULT_BASE, wrapper, schema)
    except Exception as exc:
        for c in clauses:
            res = Result(c.id, c.title, c.must, target.name, ERROR, 0.0, f"target setup failed: {exc}")
            results.append(res)
            progress(target.name, c.id, res)
        return results
    host.base_dir = base_abs
    for c in clauses:
        progress(target.name, c.id, None)
        ctx = Ctx(target.name, host, base_abs=base_abs, wrapper_abs=wrapper_abs, grace=grace)
        start = time.monotonic()
        outcome, message = await check_clause(c, ctx)
        if outcome in (FAIL, ERROR):
            for job in ctx.ids[:3]:
                with contextlib.suppress(Exception):  # evidence is best effort
                    await ctx.collect(job)
        ctx.cleanup()
        res = Result(c.id, c.title, c.must, target.name, outcome, time.monotonic() - start, message,
                     ctx.evidence.lines if outcome != PASS else [])
        results.append(res)
        progress(target.name, c.id, res)
    return results


async def run_all(targets: list[TargetSpec], *, wrapper: Path, schema: Path, base_dir: str | None,
                  clause_ids: list[str] | None, progress: Progress, parallel: int = 2) -> list[Result]:
    chosen = [c for c in CLAUSES if not clause_ids or c.id in clause_ids]
    sem = asyncio.Semaphore(parallel)

    async def one(t: TargetSpec) -> list[Result]:
        async with sem:
            return await run_target(t, wrapper=wrapper, schema=schema, base_dir=base_dir, clauses=chosen,
                                    progress=progress)

    per_target = await asyncio.gather(*(one(t) for t in targets))
    return [r for rs in per_target for r in rs]
