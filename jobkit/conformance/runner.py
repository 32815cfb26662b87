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
from jobkit.errors import JobkitError, TransportError
from jobkit.faults import FaultNotApplicable, FaultSetupError, HostHandle
from jobkit.remote import base_dir_word
from jobkit.transport import Transport

DEFAULT_BASE = "~/.jobkit-conformance"
PASS, FAIL, NA, ERROR = "pass", "FAIL", "n/a", "error"
CLAUSE_TIMEOUT = 180.0


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
    commands: list[str] = field(default_factory=list)  # the shell commands the clause ran on the target
    repro: str = ""  # the command line that reruns just this clause on just this target

    @property
    def level(self) -> str:
        return "MUST" if self.must else "SHOULD"

    def as_dict(self) -> dict[str, Any]:
        return {"clause": self.clause, "title": self.title, "must": self.must, "level": self.level,
                "target": self.target, "outcome": self.outcome, "seconds": round(self.seconds, 2),
                "message": self.message, "evidence": self.evidence, "commands": self.commands, "repro": self.repro}


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


# Every process of the clause's jobs on the target: those whose command line names one of its job
# ids (read from stdin, so this command's own line names none), their descendants, and the
# process groups they lead; and the jobs' tmux sessions.
KILL_TREE = r"""b=$1 ids=$(cat)
for s in /proc/[0-9]*/stat; do p=${s#/proc/}; p=${p%/stat}; l=; { read -r l <"$s"; } 2>/dev/null || continue
  set -- ${l##*") "}; c=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null); m=0
  for i in $ids; do case $c in *"$i"*) m=1;; esac; done; echo "$p $2 $3 $m"; done |
awk -v self=$$ '{ pp[$1]=$2; pg[$1]=$3; if ($4 == 1 && $1 != self) k[$1]=1 }
  END { do { n=0; for (p in pp) if (!(p in k) && (pp[p] in k)) { k[p]=1; n++ } } while (n)
        for (p in k) { if (pg[p] == p) print "g " p; print "p " p } }' |
while read -r w p; do if [ "$w" = p ]; then kill -s KILL "$p"; elif kill -s 0 -- "$$"; then kill -s KILL -- "-$p"
  else kill -s KILL "-$p"; fi 2>/dev/null; done
for i in $ids; do tmux -S "$b/tmux.sock" kill-session -t "=$i" 2>/dev/null; done; true"""


async def kill_clause_processes(ctx: Ctx) -> None:
    """Kill what a clause left running on its target (after its timeout): best effort."""
    if ctx.ids:
        with contextlib.suppress(JobkitError):
            await ctx.t.run(f"sh -c {shlex.quote(KILL_TREE)} kill-tree {ctx.b}", stdin="\n".join(ctx.ids) + "\n",
                            timeout=30)


async def check_clause(c: Clause, ctx: Ctx, timeout: float = CLAUSE_TIMEOUT) -> tuple[str, str]:
    """One clause on one target: its outcome and message. A fault that could not be made is
    n/a, one that could not be set up (or undone) is the suite's error, never the wrapper's FAIL;
    so is a clause over its time (its processes on the target killed), a target that stopped
    answering, and any failure of the suite's own code (its traceback in the evidence): a FAIL
    message is always the clause's sentence, never a Python exception's text."""
    try:
        await asyncio.wait_for(c.check(ctx), timeout=timeout)
        return PASS, ""
    except (NotApplicable, FaultNotApplicable) as exc:
        return NA, str(exc)
    except FaultSetupError as exc:
        ctx.evidence.add("fault setup", traceback.format_exc()[-3000:])
        return ERROR, f"the suite's fault could not be set up or undone (not the wrapper's failure): {exc}"
    except AssertionError as exc:
        if str(exc):
            return FAIL, str(exc)
        ctx.evidence.add("traceback", traceback.format_exc()[-3000:])
        return FAIL, f"{c.id} does not hold (the failed check is in the evidence)"
    except TimeoutError:
        await kill_clause_processes(ctx)
        return ERROR, (f"the clause did not finish within its timeout of {timeout:g} s; its processes on the "
                       "target were killed")
    except TransportError as exc:
        ctx.evidence.add("transport", traceback.format_exc()[-3000:])
        return ERROR, f"the target stopped answering during the clause: {exc.message}"
    except Exception:
        ctx.evidence.add("traceback of the suite's internal error", traceback.format_exc()[-3000:])
        return ERROR, ("the suite could not decide this clause (an internal error of the suite; its traceback is in "
                       "the evidence)")


async def run_target(target: TargetSpec, *, wrapper: Path, schema: Path, base_dir: str | None,
                     clauses: list[Clause], progress: Progress, grace: int = 2,
                     clause_timeout: float = CLAUSE_TIMEOUT, patience: float = 1.0,
                     repro: Callable[[str, str], str] = lambda clause, target: "") -> list[Result]:
    results: list[Result] = []
    host = HostHandle(target.transport, None, target.lab)
    try:
        base_abs, wrapper_abs = await setup_target(target.transport, base_dir or DEFAULT_BASE, wrapper, schema)
    except Exception as exc:
        for c in clauses:
            why = exc.message if isinstance(exc, JobkitError) else f"{type(exc).__name__}: {exc}"
            res = Result(c.id, c.title, c.must, target.name, ERROR, 0.0, f"target setup failed: {why}",
                         repro=repro(c.id, target.name))
            results.append(res)
            progress(target.name, c.id, res)
        return results
    host.base_dir = base_abs
    for c in clauses:
        progress(target.name, c.id, None)
        ctx = Ctx(target.name, host, base_abs=base_abs, wrapper_abs=wrapper_abs, grace=grace, patience=patience)
        start = time.monotonic()
        outcome, message = await check_clause(c, ctx, clause_timeout)
        if outcome in (FAIL, ERROR):
            for job in ctx.ids[:3]:
                with contextlib.suppress(Exception):  # evidence is best effort
                    await ctx.collect(job)
        ctx.cleanup()
        res = Result(c.id, c.title, c.must, target.name, outcome, time.monotonic() - start, message,
                     ctx.evidence.lines if outcome != PASS else [], ctx.commands if outcome != PASS else [],
                     repro(c.id, target.name))
        results.append(res)
        progress(target.name, c.id, res)
    return results


async def run_all(targets: list[TargetSpec], *, wrapper: Path, schema: Path, base_dir: str | None,
                  clause_ids: list[str] | None, progress: Progress, parallel: int = 2,
                  clause_timeout: float = CLAUSE_TIMEOUT,
                  repro: Callable[[str, str], str] = lambda clause, target: "") -> list[Result]:
    chosen = [c for c in CLAUSES if not clause_ids or c.id in clause_ids]
    sem = asyncio.Semaphore(parallel)

    async def one(t: TargetSpec) -> list[Result]:
        async with sem:
            return await run_target(t, wrapper=wrapper, schema=schema, base_dir=base_dir, clauses=chosen,
                                    progress=progress, clause_timeout=clause_timeout, repro=repro)

    per_target = await asyncio.gather(*(one(t) for t in targets))
    return [r for rs in per_target for r in rs]
