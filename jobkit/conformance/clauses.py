"""The numbered clauses of conformance/SPEC.md, each as a check over one target.

A check raises AssertionError (the clause fails, with its message) or NotApplicable (the fault
cannot be made on this target); anything else is an error of the suite. Keep SPEC.md in step.
A message names what was expected and what was found. (PYTEST_DONT_REWRITE: a clause's message
is the same under pytest as on the command line.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jobkit.conformance.context import Ctx, parse_state
from jobkit.faults import Fault, FaultNotApplicable, applicable, engine_cannot, inject
from jobkit.history import check_history
from jobkit.hosts import HostSpec
from jobkit.merge import NEVER_STARTED_REASON, SIGKILL_REASON, UNKNOWN_EXIT
from jobkit.models import JobStatus, Source, Verdict
from jobkit.probe import JobQuery, probe
from jobkit.reconcile import reconcile_host
from jobkit.store import AsyncStore, Store

Check = Callable[[Ctx], Awaitable[None]]


class NotApplicable(Exception):
    """The clause's fault cannot be made on this target."""


@dataclass(frozen=True)
class Clause:
    id: str
    title: str
    fm: str  # FAILURE-MODES.md items
    check: Check
    must: bool = True


CLAUSES: list[Clause] = []


def clause(cid: str, title: str, fm: str, must: bool = True) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CLAUSES.append(Clause(cid, title, fm, _history_checked(fn) if cid.startswith("R-") else fn, must))
        return fn
    return register


def _history_checked(fn: Check) -> Check:
    """An R clause also fails when the history its reconciliations wrote holds an impossible
    transition (jobkit.history: a final status moved, a write over a row it was not computed
    from, ...)."""

    async def checked(ctx: Ctx) -> None:
        await fn(ctx)
        for store in ctx.stores:
            bad = check_history(store.sync.history_entries())
            assert not bad, "impossible transitions in the history: " + "; ".join(v.line() for v in bad)

    return checked


def says(d: object) -> str:
    """A state file or a row, compact, for a message."""
    return json.dumps(d, default=str)[:400]


def want_verdict(v: Verdict, what: str, ok: bool) -> None:
    """An R clause's check of jobkit's verdict: what was expected, and the verdict found."""
    if not ok:
        raise AssertionError(f"expected the reconciler to decide {what}; it decided: {v.log_line()}")


def _j(value: object) -> str:
    """A value as the state file or row shows it (JSON), for a FAIL sentence."""
    return json.dumps(value, default=str)


def need(ctx: Ctx, fault: Fault) -> None:
    if not applicable(fault, ctx.host.kind):
        raise NotApplicable(f"{fault.name} cannot be made on a {ctx.host.kind} target")
    why = engine_cannot(fault, ctx.host)
    if why:
        raise NotApplicable(why)


async def final_in_both(ctx: Ctx, job: str, status: str, code: int, seconds: float = 20) -> dict[str, object]:
    st = await ctx.wait_state(job, ("completed", "failed"), seconds)
    assert (st.get("status"), st.get("exit_code")) == (status, code), \
        f"expected the state file of {job} to say {status}/{code}; it says {says(st)}"
    row = await ctx.wait_row(job, status, seconds)
    assert row.get("exit_code") == code, f"expected the row of {job} to say {status}/{code}; it says {says(row)}"
    return st


# --- W: the wrapper ---------------------------------------------------------------------------
@clause("W-1", "exit 0 is recorded completed/0 in the database and the state file; the wrapper exits 0", "2")
async def w1(ctx: Ctx) -> None:
    job = await ctx.new_job("ok")
    r = await ctx.run(job, ["sh", "-c", "exit 0"])
    assert r.exit_status == 0, f"expected the wrapper to exit 0, found exit {r.exit_status}"
    st = await final_in_both(ctx, job, "completed", 0)
    for key in ("id", "user", "started_at", "completed_at"):
        assert st.get(key) not in (None, ""), f"expected the state file of {job} to record {key}; it says {says(st)}"


@clause("W-2", "exit N is recorded failed/N in both stores; the wrapper exits N", "2")
async def w2(ctx: Ctx) -> None:
    job = await ctx.new_job("exit")
    r = await ctx.run(job, ["sh", "-c", "exit 3"])
    assert r.exit_status == 3, f"expected the wrapper to exit 3 (its job's status), found exit {r.exit_status}"
    await final_in_both(ctx, job, "failed", 3)


@clause("W-3", "the job runs in the background in its own process group: TERM to the wrapper leaves no process "
               "of the job's group within 2 s and both stores say failed/143", "1")
async def w3(ctx: Ctx) -> None:
    job = await ctx.new_job("term")
    wpid = await ctx.start_tmux(job, ["sleep", "100"])
    st = await ctx.wait_state(job, ("running",))
    pgid = ctx.pid(job, st, "pgid")
    assert pgid != wpid, "the job runs in the wrapper's own process (foreground)"
    await ctx.sh(f"kill -s TERM {wpid}")
    deadline = time.monotonic() + 2.0
    while await ctx.group_alive(pgid):
        assert time.monotonic() < deadline, f"process group {pgid} still alive 2 s after TERM"
        await asyncio.sleep(0.1)
    await final_in_both(ctx, job, "failed", 143, seconds=5)


SIGNALS = [("HUP", 1), ("INT", 2), ("QUIT", 3), ("TERM", 15), ("USR1", 10), ("USR2", 12), ("PIPE", 13)]


@clause("W-4", "each of HUP INT QUIT TERM USR1 USR2 PIPE sent to the wrapper is recorded failed with 128+n "
               "(never completed)", "2")
async def w4(ctx: Ctx) -> None:
    jobs = []
    for name, n in SIGNALS:
        job = await ctx.new_job(f"sig{name.lower()}")
        wpid = await ctx.start_tmux(job, ["sleep", "100"])
        jobs.append((job, wpid, name, n))
    for job, wpid, name, _ in jobs:
        await ctx.wait_state(job, ("running",))
        await ctx.sh(f"kill -s {name} {wpid}")
    for job, _, name, n in jobs:
        st = await ctx.wait_state(job, ("completed", "failed"), seconds=ctx.grace + 10)
        assert (st.get("status"), st.get("exit_code")) == ("failed", 128 + n), \
            f"SIG{name} to the wrapper: expected failed/{128 + n} in the state file; it says {says(st)}"


@clause("W-5", "tmux kill-session on the job's session is recorded failed, never completed, no survivors", "3")
async def w5(ctx: Ctx) -> None:
    job = await ctx.new_job("ksess")
    await ctx.start_tmux(job, ["sleep", "100"])
    st = await ctx.wait_state(job, ("running",))
    async with await inject(Fault.KILL_TMUX_SESSION, ctx.host, job_id=job):
        pass
    fin = await ctx.wait_state(job, ("completed", "failed"), seconds=ctx.grace + 10)
    assert fin.get("status") == "failed", f"after tmux kill-session: expected failed; the state file says {says(fin)}"
    pgid = ctx.pid(job, st, "pgid")
    assert not await ctx.group_alive(pgid), \
        f"expected no process of the job's group {pgid} after kill-session; some survived"


@clause("W-6", "tmux kill-server is recorded failed, never completed", "3")
async def w6(ctx: Ctx) -> None:
    job = await ctx.new_job("kserv")
    await ctx.start_tmux(job, ["sleep", "100"])
    await ctx.wait_state(job, ("running",))
    async with await inject(Fault.KILL_TMUX_SERVER, ctx.host):
        pass
    fin = await ctx.wait_state(job, ("completed", "failed"), seconds=ctx.grace + 10)
    assert fin.get("status") == "failed", f"after tmux kill-server: expected failed; the state file says {says(fin)}"


@clause("W-7", "a job that ignores TERM is killed (SIGKILL to its group) after the grace period", "6")
async def w7(ctx: Ctx) -> None:
    job = await ctx.new_job("ign")
    wpid = await ctx.start_tmux(job, ["sh", "-c", "trap '' TERM; sleep 100"])
    st = await ctx.wait_state(job, ("running",))
    await asyncio.sleep(0.3)
    await ctx.sh(f"kill -s TERM {wpid}")
    fin = await ctx.wait_state(job, ("completed", "failed"), seconds=ctx.grace + 30)
    assert fin.get("status") == "failed", f"expected failed after TERM and the grace period; it says {says(fin)}"
    pgid = ctx.pid(job, st, "pgid")
    assert not await ctx.group_alive(pgid), \
        f"expected the job (group {pgid}, ignoring TERM) killed after the grace period; it is still alive"


@clause("W-8", "at start the wrapper records pid, process group, process start time (/proc field 22) and the "
               "kernel boot id, and ISO 8601 UTC times with epoch seconds", "7, 18")
async def w8(ctx: Ctx) -> None:
    job = await ctx.new_job("facts")
    await ctx.start(job, ["sleep", "3"])
    st = await ctx.wait_state(job, ("running",))
    pid = ctx.pid(job, st)
    r = await ctx.sh(f"l=$(cat /proc/{pid}/stat) || exit 1; set -- ${{l##*') '}}; echo \"$3 ${{20}}\"; "
                     "cat /proc/sys/kernel/random/boot_id")
    facts = r.stdout.split()
    if r.exit_status != 0 or len(facts) != 3:
        raise AssertionError(f"expected the recorded pid {pid} to be the running job's process; found no such "
                             f"process (exit {r.exit_status})")
    pgrp, start, boot = facts
    assert st.get("pgid") == int(pgrp), f"expected pgid {pgrp} (from /proc); the state file says {st.get('pgid')!r}"
    assert st.get("proc_start") == int(start), \
        f"expected proc_start {start} (/proc field 22); the state file says {st.get('proc_start')!r}"
    assert st.get("boot_id") == boot, f"expected boot_id {boot}; the state file says {st.get('boot_id')!r}"
    import re
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(st.get("started_at"))), \
        f"expected started_at as YYYY-MM-DDTHH:MM:SSZ; the state file says {st.get('started_at')!r}"
    assert isinstance(st.get("started_epoch"), int), \
        f"expected started_epoch as integer seconds; the state file says {st.get('started_epoch')!r}"


@clause("W-9", "a reader never sees a partial state file: polled all through a job's life it is always one "
               "complete JSON object", "11")
async def w9(ctx: Ctx) -> None:
    job = await ctx.new_job("atomic")
    f = f"{ctx.b}/jobs/{job}.status"
    # a poller on the host reads the file as fast as it can while the job starts and ends
    poll = (f"i=0; end=$(( $(date +%s) + 6 )); while [ $(date +%s) -lt $end ]; do "
            f"if [ -e {f} ]; then c=$(cat {f}); printf '%s\\n' \"$c\" | tr -d '\\n' | "
            "grep -q '^{.*}$' || { echo \"PARTIAL:$c\"; }; fi; "
            "case $(cat " + f + " 2>/dev/null) in *completed*|*failed*) i=$((i+1)); [ $i -gt 20 ] && break;; esac; "
            "done; echo done")
    poller = asyncio.create_task(ctx.sh(poll, timeout=20))
    await asyncio.sleep(0.2)
    await ctx.run(job, ["sh", "-c", "sleep 1"])
    r = await poller
    assert "PARTIAL:" not in r.stdout, "a reader saw a partial state file:\n" + r.stdout[:800]
    await ctx.state(job)


@clause("W-10", "database held by another connection for 3 s while the job ends: the row still lands "
                "(busy timeout >= 5 s, retries)", "9")
async def w10(ctx: Ctx) -> None:
    job = await ctx.new_job("lock3")
    inj = await inject(Fault.LOCKED_DB, ctx.host, seconds=3)
    try:
        await ctx.run(job, ["true"], timeout=60)
    finally:
        await inj.restore()
    await final_in_both(ctx, job, "completed", 0)


@clause("W-11", "database locked longer than the wrapper's timeout: the state file is still final and a warning "
                "is written to stderr", "9")
async def w11(ctx: Ctx) -> None:
    job = await ctx.new_job("lock9")
    inj = await inject(Fault.LOCKED_DB, ctx.host, seconds=8)
    try:
        r = await ctx.run(job, ["true"], env={"JOBKIT_DB_TIMEOUT_MS": "1000", "JOBKIT_DB_RETRIES": "2"}, timeout=60)
        st = await ctx.state(job)
        assert st is not None, f"expected a final state file for {job}; there is none"
        assert st.get("status") == "completed", f"expected a final state file (completed); it says {says(st)}"
        row = await ctx.row(job) if inj._task is not None and inj._task.done() else None
        if row is None or row.get("status") != "completed":
            assert r.stderr.strip(), "the database write failed without a warning on stderr"
    finally:
        await inj.restore()


async def _db_fault_clause(ctx: Ctx, fault: Fault | None, tag: str, prepare: str = "") -> None:
    job = ctx.new_id(tag)
    if fault is not None:  # otherwise the row is missing: nothing inserted
        await ctx.insert_row(job)
    inj = await inject(fault, ctx.host) if fault is not None else None
    try:
        if prepare:
            await ctx.sh(prepare)
        r = await ctx.run(job, ["sh", "-c", "exit 4"], timeout=60)
        assert r.exit_status == 4, f"expected the wrapper to exit 4 (its job's status), found exit {r.exit_status}"
        st = await ctx.state(job)
        assert st is not None, f"expected a final state file for {job}; there is none"
        assert (st.get("status"), st.get("exit_code")) == ("failed", 4), \
        f"expected the state file to say failed/4; it says {says(st)}"
        assert r.stderr.strip(), "expected a warning on stderr about the database; stderr was empty"
        if fault is Fault.DELETED_DB:
            gone = await ctx.sh(f"test -e {ctx.b}/server.db && echo created || echo absent")
            assert "absent" in gone.stdout, "the wrapper created an empty database"
        if fault is None:
            assert await ctx.row(job) is None, "the wrapper inserted a row"
    finally:
        if inj is not None:
            await inj.restore()


@clause("W-12", "database missing: state file final, warning, no empty database created", "10")
async def w12(ctx: Ctx) -> None:
    await _db_fault_clause(ctx, Fault.DELETED_DB, "nodb")


@clause("W-13", "database is not a database (garbage): state file final, warning", "10")
async def w13(ctx: Ctx) -> None:
    await _db_fault_clause(ctx, Fault.CORRUPT_DB, "garbage")


@clause("W-14", "the job's row is missing: state file final, warning, no row created", "10")
async def w14(ctx: Ctx) -> None:
    await _db_fault_clause(ctx, None, "norow")


@clause("W-15", "sqlite3 is not on PATH: state file final, warning", "10")
async def w15(ctx: Ctx) -> None:
    job = await ctx.new_job("nosql")
    async with await inject(Fault.MISSING_SQLITE3, ctx.host) as inj:
        r = await ctx.run(job, ["sh", "-c", "exit 4"], env=inj.env)
    assert r.exit_status == 4, f"expected the wrapper to exit 4 (its job's status), found exit {r.exit_status}"
    st = await ctx.state(job)
    assert st is not None, f"expected a final state file for {job}; there is none"
    assert (st.get("status"), st.get("exit_code")) == ("failed", 4), \
        f"expected the state file to say failed/4; it says {says(st)}"
    assert r.stderr.strip(), "expected a warning on stderr about the database; stderr was empty"


async def wait_exited(ctx: Ctx, pid: int, seconds: float) -> None:
    """Poll until process ``pid`` has exited (gone, or a zombie nobody reaped yet)."""
    deadline = time.monotonic() + seconds
    check = (f"l=; {{ read -r l </proc/{int(pid)}/stat; }} 2>/dev/null || {{ echo gone; exit 0; }}; "
             "set -- ${l##*') '}; [ \"$1\" = Z ] && echo gone; true")
    while "gone" not in (await ctx.sh(check, record=False)).stdout:
        assert time.monotonic() < deadline, f"the wrapper (pid {pid}) was still running after {seconds:g}s"
        await asyncio.sleep(0.1)


@clause("W-16", "full disk under the state directory (blocks full, inodes free) when a running job ends: the state "
                "file stays one valid JSON object, the previous state or a complete final one, never empty or "
                "partial, and the failed write is reported", "12")
async def w16(ctx: Ctx) -> None:
    need(ctx, Fault.FULL_DISK)
    job = await ctx.new_job("full")
    conf = f"{ctx.base_abs}/.conformance"
    go = shlex.quote(f"{conf}/{job}.go")  # off the full disk, like the wrapper's output
    # The job ends when told, or by itself after 300 s at the latest (past the clause's time):
    # whatever happens to the clause, it never leaves a job running on the host.
    wpid = await ctx.start(job, ["sh", "-c", f"n=0; while [ ! -e {go} ] && [ $n -lt 6000 ]; do sleep 0.05; "
                                             "n=$((n + 1)); done"])
    try:
        before = await ctx.wait_state(job, ("running",))
        async with await inject(Fault.FULL_DISK, ctx.host):
            await ctx.sh(f"touch {go}")  # the job ends while the disk is full
            await wait_exited(ctx, wpid, 60)
            raw = await ctx.state_raw(job)  # what a reader sees on the full disk
            # the wrapper's stderr (the suite keeps it off the full disk) and its log
            report = await ctx.sh(f"cat {shlex.quote(f'{conf}/{job}.out')} {ctx.b}/jobs/{job}.wrapper.log "
                                  "2>/dev/null; true")
    finally:  # the clause failed before the job was told to end (a wrapper that never says running)
        with contextlib.suppress(Exception):  # best effort: the clause's own outcome is what counts
            await ctx.sh(f"touch {go}", record=False, timeout=10)
    assert raw is not None, "the state file was lost: the running state written before the disk filled is gone"
    assert raw.strip(), "an empty state file was left"
    st = parse_state(job, raw)
    if st.get("status") == "running":  # the final write failed: the previous state kept, and said so
        assert (st.get("id"), st.get("pid")) == (before.get("id"), before.get("pid")), \
            f"the state file is not the previous running state: {st} (before: {before})"
        assert report.stdout.strip(), "the final state write failed without a word on stderr or in the wrapper's log"
    else:
        assert (st.get("status"), st.get("exit_code")) == ("completed", 0), f"not a complete final state: {st}"
        for key in ("id", "started_at", "completed_at"):
            assert st.get(key) not in (None, ""), f"the final state lacks {key}: {st}"


HOSTILE_IDS = ["x'; DROP TABLE jobs; --", 'a"b', "../x", "$(touch /tmp/jobkit-pwned)", "", "a" * 65, "a\nb",
               "a b", "x/y"]


@clause("W-17", "invalid and hostile job ids are refused with a non-zero exit before any side effect", "16")
async def w17(ctx: Ctx) -> None:
    before = await ctx.sh(f"sqlite3 -cmd '.timeout 5000' {ctx.b}/server.db .dump | md5sum; ls -a {ctx.b}/jobs | md5sum")
    for bad in HOSTILE_IDS:
        r = await ctx.run(bad, ["touch", f"{ctx.base_abs}/.conformance/ran"])
        assert r.exit_status != 0, f"expected the job id {bad!r} to be refused (non-zero exit); the wrapper exited 0"
    after = await ctx.sh(f"sqlite3 -cmd '.timeout 5000' {ctx.b}/server.db .dump | md5sum; ls -a {ctx.b}/jobs | md5sum")
    assert before.stdout == after.stdout, \
        "expected the database and the jobs directory unchanged after refused ids; one of them changed"
    r = await ctx.sh(f"test -e {ctx.b}/.conformance/ran || test -e /tmp/jobkit-pwned && echo ran || echo clean")
    assert "clean" in r.stdout, "expected no job to run for a refused id; the job ran, or the id was executed"


@clause("W-18", "every JSON string in the state file is escaped: hostile user names round-trip", "16")
async def w18(ctx: Ctx) -> None:
    job = await ctx.new_job("esc")
    weird = 'q"u\\o\tte\x01$(x)é'
    await ctx.run(job, ["true"], env={"USER": weird, "LOGNAME": weird})
    st = await ctx.state(job)
    assert st is not None, f"expected a state file for {job}; there is none"
    assert st.get("user") == weird, f"expected user {weird!r} to round-trip; the state file says {st.get('user')!r}"


@clause("W-19", "the job inherits no descriptor on the wrapper's files or locks, and a long job never blocks "
                "another job's state writes", "14, 15")
async def w19(ctx: Ctx) -> None:
    long_job, short_job = await ctx.new_job("long"), await ctx.new_job("short")
    await ctx.start(long_job, ["sleep", "30"])
    st = await ctx.wait_state(long_job, ("running",))
    # descriptors 0-2 are the job's own output (redirected by the suite); anything else is inherited
    fds = await ctx.sh(f"for f in /proc/{ctx.pid(long_job, st)}/fd/*; do case ${{f##*/}} in 0|1|2) ;; "
                       "*) readlink \"$f\";; esac; done")
    assert ctx.base_abs not in fds.stdout, f"the job holds descriptors under the base directory:\n{fds.stdout}"
    start = time.monotonic()
    await ctx.run(short_job, ["true"], timeout=30)
    fin = await ctx.state(short_job)
    assert fin is not None, "expected a state file for the second job; there is none"
    assert fin.get("status") == "completed", f"expected the second job completed; its state file says {says(fin)}"
    assert time.monotonic() - start < 10, "the second job's write waited for the first job"
    await ctx.sh(f"kill -s TERM {int(st.get('wrapper_pid') or ctx.pid(long_job, st))} 2>/dev/null; true")


@clause("W-20", "timestamps are recorded without `date -I` (a date(1) that lacks it)", "18")
async def w20(ctx: Ctx) -> None:
    job = await ctx.new_job("noiso")
    async with await inject(Fault.NO_DATE_ISO, ctx.host) as inj:
        await ctx.run(job, ["true"], env=inj.env)
    st = await ctx.state(job)
    assert st is not None, f"expected a final state file for {job}; there is none"
    assert st.get("status") == "completed", f"expected completed without date -I; the state file says {says(st)}"
    for key in ("started_at", "completed_at"):
        assert str(st.get(key) or "").endswith("Z"), f"expected {key} in UTC ending in Z; it is {st.get(key)!r}"


@clause("W-21", "the wrapper is POSIX sh: run by the host's /bin/sh it records a clean job", "18")
async def w21(ctx: Ctx) -> None:
    job = await ctx.new_job("posix")
    r = await ctx.run(job, ["sh", "-c", "exit 0"], via="/bin/sh")
    assert r.exit_status == 0, f"/bin/sh {ctx.wrapper_abs}: exit {r.exit_status}: {r.stderr[-300:]}"
    await final_in_both(ctx, job, "completed", 0)


@clause("W-22", "the wrapper's own writes to a hung-up terminal (a broken pipe) never cost the job's record",
        "4, 5")
async def w22(ctx: Ctx) -> None:
    job = ctx.new_id("epipe")  # no row: the wrapper has a warning to write, into a closed pipe
    await ctx.run(job, ["sh", "-c", "sleep 0.5; exit 2"], redirect="2>&1 | true")
    st = await ctx.wait_state(job, ("completed", "failed"), seconds=10)
    assert (st.get("status"), st.get("exit_code")) == ("failed", 2), \
        f"expected failed/2 despite the broken pipe; the state file says {says(st)}"


@clause("W-23", "a job id already used is refused and the first record kept", "16", must=False)
async def w23(ctx: Ctx) -> None:
    job = await ctx.new_job("dup")
    await ctx.run(job, ["true"])
    first = await ctx.state_raw(job)
    r = await ctx.run(job, ["sh", "-c", "exit 9"])
    assert r.exit_status not in (0, 9), f"expected a second use of the id to be refused; it ran (exit {r.exit_status})"
    assert await ctx.state_raw(job) == first, "expected the first record of the id kept; it was overwritten"



ARGV_WORDS = ["FOO=1", "-i", "--", "-", "--json"]
# a program that records its arguments and whether the environment arrived intact
ARGV_PROG = ("#!/bin/sh\n{ printf 'arg:%s\\n' \"$@\"; printf 'env:%s\\n' \"${JOBKIT_ARGV_MARK:-missing}\"; } "
             ">\"$JOBKIT_ARGV_OUT\"\n")


@clause("W-24", "the command's argv reaches exec untouched whatever its first word looks like (NAME=value, -i, "
                "--, -)", "16, 18")
async def w24(ctx: Ctx) -> None:
    d = f"{ctx.base_abs}/.conformance/argv-bin"
    names = " ".join(shlex.quote(w) for w in ARGV_WORDS)
    r = await ctx.sh(f"d={shlex.quote(d)}; mkdir -p \"$d\" && cat >\"$d/.prog\" && chmod 755 \"$d/.prog\" && "
                     f"for n in {names}; do cp -- \"$d/.prog\" \"$d/$n\" || exit 1; done; printf '%s' \"$PATH\"",
                     stdin=ARGV_PROG)
    assert r.exit_status == 0, f"could not create the programs: {r.stderr}"
    path = f"{d}:{r.stdout.strip().splitlines()[-1] if r.stdout.strip() else '/usr/bin:/bin'}"
    args = ["a b", "-x", "Y=2", ""]
    want = "".join(f"arg:{a}\n" for a in args) + "env:intact\n"
    for word in ARGV_WORDS:
        job = await ctx.new_job("argv")
        out = f"{ctx.base_abs}/.conformance/{job}.argv"
        r = await ctx.run(job, [word, *args], env={"PATH": path, "JOBKIT_ARGV_MARK": "intact",
                                                   "JOBKIT_ARGV_OUT": out})
        got = await ctx.sh(f"cat {shlex.quote(out)} 2>/dev/null || echo '(the program did not run)'")
        assert got.stdout == want, (f"first word {word!r}: the program {word!r} got {got.stdout!r} instead of "
                                    f"{want!r} (wrapper exit {r.exit_status}: {r.stderr.strip()[-300:]})")
        assert r.exit_status == 0, f"first word {word!r}: wrapper exit {r.exit_status}"
        await final_in_both(ctx, job, "completed", 0)
    job = await ctx.new_job("argv")  # no program FOO=1: not an assignment but a command not found
    ran = f"{ctx.base_abs}/.conformance/{job}.ran"
    r = await ctx.run(job, ["FOO=1", "touch", ran])
    gone = await ctx.sh(f"test -e {shlex.quote(ran)} && echo ran || echo absent")
    assert "absent" in gone.stdout, "FOO=1 was taken as an assignment: the rest of the argv ran"
    assert r.exit_status == 127, f"FOO=1 (no such program): wrapper exit {r.exit_status}, not 127"
    await final_in_both(ctx, job, "failed", 127)

@clause("W-25", "a signal to the wrapper reaches the job, which gets the grace period to clean up: a TERM handler "
                "that takes 0.5 s completes", "1, 6")
async def w25(ctx: Ctx) -> None:
    job = await ctx.new_job("handler")
    mark = f"{ctx.base_abs}/.conformance/{job}.cleaned"
    handler = f"trap 'sleep 0.5; echo cleaned >{shlex.quote(mark)}; exit 3' TERM; sleep 100 & wait"
    wpid = await ctx.start_tmux(job, ["sh", "-c", handler])
    await ctx.wait_state(job, ("running",))
    await asyncio.sleep(0.3)  # the job's shell has installed its trap
    await ctx.sh(f"kill -s TERM {wpid}")
    fin = await ctx.wait_state(job, ("completed", "failed"), seconds=ctx.grace + 15)
    assert fin.get("status") == "failed", (f"expected the state file to say failed after TERM to the wrapper; it says "
                                           f"{_j(fin.get('status'))} ({_j(fin)[:300]})")
    r = await ctx.sh(f"cat {shlex.quote(mark)} 2>/dev/null || echo absent")
    assert "cleaned" in r.stdout, ("the job's TERM handler did not complete: the signal was not forwarded to the "
                                   f"job, or it was killed before the grace period ({ctx.grace} s) was over")


def _utc_epoch(iso: object) -> int | None:
    import calendar

    try:
        return calendar.timegm(time.strptime(str(iso), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None


@clause("W-26", "times are UTC whatever the host's TZ: with TZ=JST-9 each ISO time and its epoch seconds are the "
                "same instant, the host's", "18")
async def w26(ctx: Ctx) -> None:
    job = await ctx.new_job("tz")
    before = int((await ctx.sh("date +%s")).stdout.strip().splitlines()[-1])
    await ctx.run(job, ["true"], env={"TZ": "JST-9"})
    after = int((await ctx.sh("date +%s")).stdout.strip().splitlines()[-1])
    st = await ctx.wait_state(job, ("completed", "failed"))
    for iso_key, epoch_key in (("started_at", "started_epoch"), ("completed_at", "completed_epoch")):
        iso, epoch = st.get(iso_key), st.get(epoch_key)
        assert isinstance(epoch, int), (f"expected {epoch_key} in the state file to be whole seconds since the epoch; "
                                        f"found {_j(epoch)}")
        assert before - 2 <= epoch <= after + 2, (f"{epoch_key} = {epoch} is not the host's time "
                                                  f"(between {before} and {after})")
        as_utc = _utc_epoch(iso)
        assert as_utc is not None, f"{iso_key} = {iso!r} is not ISO 8601 UTC"
        assert abs(as_utc - epoch) <= 1, (f"{iso_key} = {iso!r} is {as_utc - epoch:+d} s from {epoch_key} = {epoch}: "
                                          "local time marked Z, or an epoch that is not one")


@clause("W-27", "while the job runs, its database row says running with the pid, process group and process start "
                "time of the state file", "7, 20")
async def w27(ctx: Ctx) -> None:
    job = await ctx.new_job("runrow")
    await ctx.start(job, ["sleep", "5"])
    st = await ctx.wait_state(job, ("running",))
    row = await ctx.wait_row(job, "running", seconds=10)
    for key in ("pid", "pgid", "proc_start"):
        assert row.get(key) == st.get(key), (f"expected the running row's {key} to be the state file's "
                                             f"{_j(st.get(key))}; the row has {_j(row.get(key))}")
    await ctx.sh(f"kill -s TERM {int(st.get('wrapper_pid') or st['pid'])} 2>/dev/null; true")


@clause("W-28", "a single quote in a recorded value (the user name) never costs the database update: the row is "
                "final and the user round-trips", "10, 16")
async def w28(ctx: Ctx) -> None:
    job = await ctx.new_job("quote")
    weird = "o'brien"
    await ctx.run(job, ["true"], env={"USER": weird, "LOGNAME": weird})
    await final_in_both(ctx, job, "completed", 0, seconds=10)
    row = await ctx.row(job)
    assert row is not None, "expected the job's database row to be there after the job; there is no row"
    assert row.get("user") == weird, (f"expected the row's user to be {_j(weird)} (a single quote in it); the row has "
                                     f"{_j(row.get('user'))}")


@clause("W-29", "a database lock that outlasts one busy timeout is retried: with JOBKIT_DB_TIMEOUT_MS=1000 and the "
                "database held 3 s, the row still lands", "9", must=False)
async def w29(ctx: Ctx) -> None:
    job = await ctx.new_job("retry")
    inj = await inject(Fault.LOCKED_DB, ctx.host, seconds=3)
    try:
        await ctx.run(job, ["true"], env={"JOBKIT_DB_TIMEOUT_MS": "1000"}, timeout=60)
    finally:
        await inj.restore()
    await final_in_both(ctx, job, "completed", 0, seconds=10)


# --- R: the reconciler (jobkit's, over what the wrapper leaves on the host) -----------------
def _store(ctx: Ctx) -> tuple[AsyncStore, str]:
    """A local store of the clause's own (removed with the clause's other resources) that knows
    the target as a host."""
    import shutil
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="jobkit-conf-"))
    store = AsyncStore(Store(d / "store.db"))
    ctx.stores.append(store)
    ctx.on_cleanup(store.sync.close)
    ctx.on_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
    name = f"conf-{ctx.target}"
    store.sync.add_host(HostSpec(name, "127.0.0.1", 22, "x", Path("/dev/null"), "unused", ctx.base_abs))
    return store, name


async def _reconcile_setup(ctx: Ctx, tag: str, argv: list[str]) -> tuple[AsyncStore, str, str]:
    store, name = _store(ctx)
    job = ctx.new_id(tag)
    await store.call(store.sync.add_job, job, name, argv)
    await ctx.insert_row(job)
    await ctx.start_tmux(job, argv)
    return store, name, job


def verdict_of(report: Any, job: str, store: AsyncStore | None = None) -> Verdict:
    """jobkit's verdict on ``job`` in a reconciliation report; none is a failure that says why it
    may be missing (a job already final in the store is not reconciled again)."""
    for v in report.verdicts:
        if v.job_id == job:
            return v  # type: ignore[no-any-return]
    known = ""
    if store is not None:
        try:
            rec = store.sync.job(job)
            known = f"; jobkit's store already holds it as {rec.status.value} (a final status is never revisited)"
        except Exception:
            known = "; jobkit's store does not know it"
    raise AssertionError(f"expected the reconciler to give a verdict on {job}; it gave none{known}")


async def _reconcile(ctx: Ctx, store: AsyncStore, name: str, job: str, grace: float = 30.0) -> tuple[Any, Verdict]:
    report = await reconcile_host(ctx.t, store, name, base_dir=ctx.base_abs, grace=grace)
    v = verdict_of(report, job, store)
    ctx.evidence.add(f"reconcile {job}", v.log_line())
    return report, v


@clause("R-1", "one round trip per host returns the evidence for every job (100 jobs, one command)", "24")
async def r1(ctx: Ctx) -> None:
    calls = 0
    real = ctx.t

    class Counting:
        host_name = real.host_name

        async def run(self, command: str, **kw: object):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return await real.run(command, **kw)  # type: ignore[arg-type]

        async def close(self) -> None:
            return None

    ids = [ctx.new_id(f"many{i}") for i in range(100)]
    result = await probe(Counting(), [JobQuery(i) for i in ids], ctx.base_abs)
    assert calls == 1, f"{calls} remote commands for 100 jobs"
    assert result.host.reachable, result.host.error
    assert len(result.evidence) == 100


@clause("R-2", "database locked during reconciliation: the answer comes from the state file, within the bound", "9, 20")
async def r2(ctx: Ctx) -> None:
    store, name, job = await _reconcile_setup(ctx, "rlock", ["sh", "-c", "exit 6"])
    await ctx.wait_state(job, ("failed",))
    async with await inject(Fault.LOCKED_DB, ctx.host, seconds=4):
        start = time.monotonic()
        _, v = await _reconcile(ctx, store, name, job)
        assert time.monotonic() - start < 6
    want_verdict(v, "failed/6 from the state file", (v.status, v.exit_code, v.source) == (JobStatus.FAILED, 6,
                                                                                           Source.STATE_FILE))


@clause("R-3", "state file deleted: the answer comes from the database", "20")
async def r3(ctx: Ctx) -> None:
    store, name, job = await _reconcile_setup(ctx, "rnofile", ["sh", "-c", "exit 5"])
    await ctx.wait_state(job, ("failed",))
    await ctx.wait_row(job, "failed")
    async with await inject(Fault.DELETED_STATE_FILE, ctx.host, job_id=job):
        _, v = await _reconcile(ctx, store, name, job)
    want_verdict(v, "failed/5 from the database",
                 (v.status, v.exit_code, v.source) == (JobStatus.FAILED, 5, Source.DATABASE))


@clause("R-4", "database row and state file both gone, the process alive: running, decided by liveness", "7, 23")
async def r4(ctx: Ctx) -> None:
    store, name, job = await _reconcile_setup(ctx, "ralive", ["sleep", "60"])
    await ctx.wait_state(job, ("running",))
    await _reconcile(ctx, store, name, job)  # learns pid and start time
    await ctx.sh(f"sqlite3 -cmd '.timeout 5000' {ctx.b}/server.db \"DELETE FROM jobs WHERE id = '{job}'\"")
    async with await inject(Fault.DELETED_STATE_FILE, ctx.host, job_id=job):
        _, v = await _reconcile(ctx, store, name, job)
        await ctx.sh(f"tmux -S {ctx.b}/tmux.sock kill-session -t ={job}; true")
    want_verdict(v, "running, by liveness", (v.status, v.source) == (JobStatus.RUNNING, Source.LIVENESS))


@clause("R-5", "wrapper and job SIGKILLed: running within the grace period; after it `lost`, 'possible "
               "SIGKILL', exit status unknown (never failed or completed: nothing recorded the end)", "7")
async def r5(ctx: Ctx) -> None:
    store, name, job = await _reconcile_setup(ctx, "rkill", ["sleep", "60"])
    st = await ctx.wait_state(job, ("running",))
    ctx.pid(job, st)  # what the reconciler decides liveness by (and the fault kills)
    await _reconcile(ctx, store, name, job)
    async with await inject(Fault.SIGKILL_WRAPPER, ctx.host, job_id=job):
        await (await inject(Fault.SIGKILL_JOB_GROUP, ctx.host, job_id=job)).restore()
    await ctx.wait_gone(ctx.pid(job, st, "pgid"), st.get("wrapper_pid"))
    _, within = await _reconcile(ctx, store, name, job, grace=60)
    assert within.status is JobStatus.RUNNING, f"not running within the grace period: {within.log_line()}"
    _, v = await _reconcile(ctx, store, name, job, grace=0)
    want_verdict(v, "lost, exit status unknown", (v.status, v.exit_code) == (JobStatus.LOST, None))
    want_verdict(v, f"the reason {SIGKILL_REASON!r}", v.reason.startswith(SIGKILL_REASON))
    want_verdict(v, f"a reason saying {UNKNOWN_EXIT!r}", UNKNOWN_EXIT in v.reason)


@clause("R-6", "a final state beats `running`: database says running, state file says completed", "20")
async def r6(ctx: Ctx) -> None:
    store, name, job = await _reconcile_setup(ctx, "rfinal", ["true"])
    await ctx.wait_state(job, ("completed",))
    await ctx.wait_row(job, "completed")
    await ctx.sh(f"sqlite3 -cmd '.timeout 5000' {ctx.b}/server.db \"UPDATE jobs SET status = 'running', "
                 f"exit_code = NULL WHERE id = '{job}'\"")
    _, v = await _reconcile(ctx, store, name, job)
    want_verdict(v, "completed from the state file", (v.status, v.source) == (JobStatus.COMPLETED, Source.STATE_FILE))


@clause("R-7", "an unreachable or slow host is unavailable: last status kept, stale, never failed, answered "
               "within timeout + 1 s", "19")
async def r7(ctx: Ctx) -> None:
    need(ctx, Fault.SLOW_HOST)
    store, name, job = await _reconcile_setup(ctx, "rslow", ["sleep", "60"])
    await ctx.wait_state(job, ("running",))
    await _reconcile(ctx, store, name, job)
    for fault in (Fault.SLOW_HOST, Fault.UNREACHABLE_HOST):
        from jobkit.transport_ssh import SSHTransport

        fresh = SSHTransport(ctx.host.lab.spec) if ctx.host.lab is not None else ctx.t
        async with await inject(fault, ctx.host):
            start = time.monotonic()
            report = await reconcile_host(fresh, store, name, base_dir=ctx.base_abs, timeout=5)
            elapsed = time.monotonic() - start
        if fresh is not ctx.t:
            await fresh.close()
        v = verdict_of(report, job, store)
        ctx.evidence.add(f"{fault.name}", f"{elapsed:.2f}s {v.log_line()}")
        assert elapsed < 6, f"{fault.name}: answered after {elapsed:.1f}s"
        want_verdict(v, f"{fault.name}: running, stale", (v.status, v.stale) == (JobStatus.RUNNING, True))
    await ctx.sh(f"tmux -S {ctx.b}/tmux.sock kill-session -t ={job}; true")


@clause("R-9", "a job submitted but never started (no session, no state) is queued within the grace period; "
               "after it the reconciler fences its id (claims it, as a wrapper would) and records it failed, "
               "'Job never started'; a late launch of that id then never runs the job", "8")
async def r9(ctx: Ctx) -> None:
    store, name = _store(ctx)
    job = ctx.new_id("never")
    await store.call(store.sync.add_job, job, name, ["true"], time.time() - 120)
    await ctx.insert_row(job)  # the client queued it; the launch never happened
    report = await reconcile_host(ctx.t, store, name, base_dir=ctx.base_abs, grace=600)
    early = verdict_of(report, job, store)
    want_verdict(early, "queued within the grace period", early.status is JobStatus.QUEUED)
    report = await reconcile_host(ctx.t, store, name, base_dir=ctx.base_abs, grace=30)
    v = verdict_of(report, job, store)
    ctx.evidence.add("reconcile", v.log_line())
    want_verdict(v, "failed after the grace period", v.status is JobStatus.FAILED)
    want_verdict(v, f"the reason {NEVER_STARTED_REASON!r}", v.reason.startswith(NEVER_STARTED_REASON))
    marker = f"{ctx.base_abs}/.conformance/ran-{job}"
    late = await ctx.run(job, ["touch", marker])  # the launch that was still in flight
    ran = await ctx.sh(f"test -e {shlex.quote(marker)} && echo ran || echo no")
    assert "no" in ran.stdout, f"the fenced job ran when its launch arrived late (wrapper exit {late.exit_status})"


@clause("R-8", "a changed boot id means the host rebooted: the job is not running any more; `lost`, exit status "
               "unknown (never completed or failed: nothing recorded its end)", "7")
async def r8(ctx: Ctx) -> None:
    need(ctx, Fault.HOST_REBOOT)
    store, name, job = await _reconcile_setup(ctx, "rboot", ["sleep", "60"])
    await ctx.wait_state(job, ("running",))
    await _reconcile(ctx, store, name, job)
    try:
        inj = await inject(Fault.HOST_REBOOT, ctx.host)
    except FaultNotApplicable as exc:
        raise NotApplicable(str(exc)) from exc
    try:
        from jobkit.transport_ssh import SSHTransport

        fresh = SSHTransport(ctx.host.lab.spec)
        report = await reconcile_host(fresh, store, name, base_dir=ctx.base_abs)
        await fresh.close()
    finally:
        await inj.restore()
    v = verdict_of(report, job, store)
    ctx.evidence.add("after reboot", v.log_line())
    want_verdict(v, "lost, exit status unknown", (v.status, v.exit_code) == (JobStatus.LOST, None))
    want_verdict(v, "a reason saying the host rebooted", "rebooted" in v.reason)


# --- what each clause needs of a target (`jobkit conformance --list`) ---------------------------
BASE_NEEDS = "POSIX sh, sqlite3, /proc"
TMUX = "tmux"
NEEDS: dict[str, str] = {
    **{c: TMUX for c in ("W-3", "W-4", "W-5", "W-6", "W-7", "R-2", "R-3", "R-4", "R-6")},
    "W-10": "a second sqlite3 connection holding the database",
    "W-11": "a second sqlite3 connection holding the database",
    "W-12": "the database removed and restored", "W-13": "the database replaced and restored",
    "W-15": "a PATH shim without sqlite3", "W-20": "a PATH shim whose date(1) lacks -I",
    "W-16": "root and mount (tmpfs + overlay): local run as root or a lab container; n/a on ssh:// hosts",
    "R-5": "tmux; SIGKILL of the wrapper and the job's group",
    "R-7": "tmux; a host that can be paused or made unreachable: local or a lab container; n/a on ssh:// hosts",
    "R-8": "a lab container (a simulated reboot changes the boot id); n/a on local and ssh:// hosts",
}


def needs(cid: str) -> str:
    extra = NEEDS.get(cid)
    return f"{BASE_NEEDS}; {extra}" if extra else BASE_NEEDS
