"""A stateful, end-to-end model of the runtime: hypothesis drives the real runner, probe, merge,
store and wrapper against a real host, with faults, and checks every verdict against the ground
truth the model keeps.

Rules submit jobs with random behaviour (exit code, ignoring TERM, output, a child process),
release them, cancel them, SIGKILL their wrapper or their group, kill their tmux session or the
tmux server, lock / delete / corrupt the server database, delete / corrupt state files, pause the
host, step the client's clock ahead, reconcile as if the grace period had passed, restart the
runner (new store connections) and reconcile — also from a second client on the same store whose answers arrive
late. After every step: no verdict contradicts the truth, the history checker finds nothing,
every reconcile was one round trip within its bound, and a paused host changed no status. When
the example ends every fault is lifted, every job released and waited for, and then every
verdict must equal the truth (or be `lost` where nothing could record the end), and nothing may
be lost.

Hypothesis rules cannot be async: the machine owns an event loop and runs each rule on it, so a
late reconciliation started by one rule goes on while later rules run.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from jobkit.deploy import deploy
from jobkit.errors import JobkitError, LaunchFailed, OutcomeUnknown, RemoteTimeout, TransportError
from jobkit.faults import Fault, HostHandle, Injected, inject
from jobkit.history import check_history, host_records
from jobkit.lab import LabHost
from jobkit.models import JobStatus
from jobkit.probe import JobQuery, probe
from jobkit.reconcile import HostReport, ReconcileService, Tick, reconcile_host
from jobkit.runner import cancel, submit
from jobkit.store import AsyncStore, Store
from jobkit.transport import CommandResult
from jobkit.transport_ssh import SSHTransport

HOST = "sm"
TIMEOUT = 1.5  # the reconcile bound under test (a paused host costs this much per reconcile)
SETTLE_TIMEOUT = 10.0  # once every fault is lifted: a loaded machine must not look unreachable
SLACK = 1.0  # "returns within timeout + 1 s"
PAUSE_LIMIT = 600.0  # a frozen local target thaws by itself after this (a test that died must not hang)
LATE_TIMEOUT = 3.0  # the second client's bound: its answers arrive up to 2 s late, or never in time (4 s)
KILL_GRACE = 1  # the wrapper's grace between TERM and KILL


def note(message: str) -> None:
    """hypothesis's note() inside a test run, a plain print in a replayed example (pytest -s)."""
    if currently_in_test_context():
        hypothesis_note(message)
    else:
        print(message)


async def quietly(coro: Any) -> None:
    """Await a cleanup step whatever it raises (the next steps must run too)."""
    with contextlib.suppress(Exception):
        await coro


#: which job a rule acts on: an index into the sorted candidates (modulo their number), an
#: explicit argument so that a failing example prints as a program that runs as is
WHICH = st.integers(min_value=0, max_value=7)


def pick(candidates: list[str], which: int) -> str:
    return candidates[which % len(candidates)]


End = tuple[str, int | None]


@dataclass
class Truth:
    """What really happened to one job, as far as the model knows.

    ``ends`` holds every final record the job can have, each with the earliest moment (this
    process's monotonic clock) it can exist: the wrapper records the first signal it receives
    as 128+n whatever the job then does (a job that ignores TERM still ends 143, only later: by
    the timer's KILL after the grace, or by itself), and nothing at all once it is gone before
    writing its final state. A final status in the store that is not in ``ends``, or is there
    before its earliest moment, is a wrong verdict."""

    job_id: str
    code: int
    ignores_term: bool
    submitted: float = 0.0  # monotonic: the submission started (the job cannot start before)
    launch: str = "ok"  # ok | failed (provably nothing started) | unknown
    released: bool = False
    exits_at: float | None = None  # the job's own exit can happen from then on (released)
    wrapper_signalled: bool = False
    group_killed: bool = False
    wrapper_killed: bool = False
    recorder_gone: bool = False  # the wrapper was killed before its final state: nothing records an end
    file_faulted: bool = False  # its state file was replaced by a fault (restored from a copy later)
    db_faulted: bool = False  # the database was deleted or corrupted (restored later) during its life
    ends: dict[End, float] = field(default_factory=dict)  # finals it may have, and from when

    @property
    def at_risk(self) -> bool:
        """Both records of its end may be gone: the database lost its updates while the state
        file was put back from an older copy."""
        return self.file_faulted and self.db_faulted

    def end_by_itself(self) -> End:
        return ("completed", 0) if self.code == 0 else ("failed", self.code)

    def may_end(self, end: End, earliest: float) -> None:
        if self.recorder_gone:
            return  # whatever happens now, no wrapper records it
        self.ends[end] = min(earliest, self.ends.get(end, earliest))

    def signalled(self, sig: int, at: float, certain: bool = True) -> None:
        """The wrapper received signal ``sig`` (it forwards it to the job's group) at ``at``, or
        later; not ``certain``: it may have, or may never."""
        if self.wrapper_killed:
            return
        if sig != 15 or not self.ignores_term:
            self.job_dies(at)  # forwarded to the job's group, it ends the job now
        if self.wrapper_signalled:
            return  # the first signal the wrapper received is the one it records
        self.wrapper_signalled = certain
        if sig == 15 and self.ignores_term:
            # the job lives on until the timer's KILL, or until its own exit, or another signal
            over = at + KILL_GRACE if self.exits_at is None else min(at + KILL_GRACE, max(at, self.exits_at))
        else:
            over = at
        self.may_end(("failed", 128 + sig), over)

    def job_dies(self, at: float) -> None:
        """The job may be gone from ``at`` on (its own exit, a KILL to its group): a TERM it
        ignored is recorded from then on, not only after the timer's KILL."""
        if self.ignores_term and ("failed", 143) in self.ends:
            self.ends[("failed", 143)] = min(self.ends[("failed", 143)], at)

    def allowed_finals(self, now: float | None = None) -> set[End]:
        out = {e for e, at in self.ends.items() if now is None or at <= now}
        if self.launch != "ok":
            out.add(("failed", None))  # never started (launch failed, or fenced later)
        return out

    def lost_allowed(self) -> bool:
        return self.wrapper_killed or self.at_risk or self.launch == "unknown"


class SteppedClock:
    """The client machine's wall clock, stepped by ``offset`` seconds (NTP correcting it, a
    suspended laptop): put in place of the ``time`` module of the jobkit modules that stamp the
    store and decide on wall time, for both clients (a CLI and a service on one machine share a
    clock). The monotonic clock does not move, as with a real step."""

    MODULES = ("jobkit.reconcile", "jobkit.store", "jobkit.runner", "jobkit.sagas")

    def __init__(self) -> None:
        self.offset = 0.0
        self.real = time

    def time(self) -> float:
        return self.real.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def install(self) -> None:
        for name in self.MODULES:
            importlib.import_module(name).time = self

    def uninstall(self) -> None:
        for name in self.MODULES:
            importlib.import_module(name).time = self.real


class Counting:
    """The transport under test, counting its calls (one reconcile = one round trip)."""

    def __init__(self, real: SSHTransport) -> None:
        self.real, self.calls = real, 0

    @property
    def host_name(self) -> str:
        return self.real.host_name

    async def run(self, command: str, **kw: Any) -> CommandResult:
        self.calls += 1
        return await self.real.run(command, **kw)

    async def close(self) -> None:
        await self.real.close()


class LateAnswers(Counting):
    """A second client's transport: the host's answer reaches it ``delay`` seconds late. The
    delay is part of the round trip, as a slow network's would be: an answer later than the
    call's timeout never arrives (RemoteTimeout, as from the real transport)."""

    def __init__(self, real: SSHTransport, delay: float) -> None:
        super().__init__(real)
        self.delay = delay

    async def run(self, command: str, **kw: Any) -> CommandResult:
        timeout = kw.get("timeout")

        async def late() -> CommandResult:
            r = await super(LateAnswers, self).run(command, **kw)
            await asyncio.sleep(self.delay)
            return r
        try:
            return await asyncio.wait_for(late(), timeout)
        except TimeoutError:
            raise RemoteTimeout(f"no answer within {timeout:g}s (it was {self.delay:g}s late)",
                                host=self.host_name, command=command) from None


class RuntimeMachine(RuleBasedStateMachine):
    #: the lab target a subclass runs on, and the host a fixture started for it (shared by the
    #: examples; each example gets a base directory of its own)
    target: ClassVar[str]
    host: ClassVar[LabHost]
    #: the examples not cleaned up yet: a replayed example that fails never reaches its
    #: teardown, the fixture cleans up after it
    open_examples: ClassVar[list[RuntimeMachine]] = []

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(__import__("tempfile").mkdtemp(prefix="jobkit-sm-"))
        self.base = f"~/.jobkit-sm-{uuid.uuid4().hex[:8]}"
        self.base_abs = ""
        self.jobs: dict[str, Truth] = {}
        self.db_fault: Injected | None = None
        self.db_fault_kind: Fault | None = None
        self.file_faults: dict[str, Injected] = {}
        self.clock_shim: Injected | None = None  # the wrapper's clock an hour behind (a PATH shim)
        self.lock_until = 0.0
        self.paused, self.paused_at = False, 0.0
        self.late: asyncio.Task[tuple[Any, float]] | None = None
        self.late_transport: LateAnswers | None = None
        self.late_delay, self.late_started = 0.0, 0.0
        self.idle, self.idle_since = 0.0, None  # type: tuple[float, float | None]
        self.n = 0
        self.stores: list[AsyncStore] = []
        self.t: Counting | None = None
        self.t_late: SSHTransport | None = None
        self.open_examples.append(self)
        self.clock = SteppedClock()  # installed by the first step, taken out by the cleanup

    # --- plumbing -----------------------------------------------------------------------------
    def run(self, coro: Any) -> Any:
        """Run the coroutine on the machine's loop; the time between two runs, when nothing on
        the loop can progress (a late client's task included), is counted in ``idle``."""
        if self.idle_since is not None:
            self.idle += time.monotonic() - self.idle_since
        try:
            return self.loop.run_until_complete(coro)
        finally:
            self.idle_since = time.monotonic()

    async def timed(self, coro: Any) -> tuple[Any, float]:
        """The coroutine's result and how long it took while the loop ran (a late client's task
        only progresses while a rule runs the loop)."""
        t0, idle0 = time.monotonic(), self.idle
        result = await coro
        return result, time.monotonic() - t0 - (self.idle - idle0)

    @property
    def store(self) -> AsyncStore:
        return self.stores[0]

    def sh(self, command: str, timeout: float = 10.0) -> CommandResult:
        assert self.t is not None
        return self.run(self.t.real.run(command, timeout=timeout))

    def state_field(self, job: str, name: str) -> int | None:
        r = self.sh(f"sed -n 's/.*\"{name}\":\\([0-9][0-9]*\\).*/\\1/p' {self.base_abs}/jobs/{job}.status "
                    "2>/dev/null")
        out = r.stdout.strip()
        return int(out) if out.isdigit() else None

    def open_stores(self) -> None:
        path = self.tmp / "store.db"
        self.stores = [AsyncStore(Store(path)), AsyncStore(Store(path))]

    def close_stores(self) -> None:
        for s in self.stores:
            s.sync.close()
        self.stores = []

    @initialize()
    def setup(self) -> None:
        spec = self.host.spec
        self.open_stores()
        self.store.sync.add_host(type(spec)(HOST, spec.address, spec.port, spec.user, spec.private_key,
                                            spec.known_host_key, self.base))
        self.t = Counting(SSHTransport(spec))
        self.t_late = SSHTransport(spec)
        self.base_abs = self.run(deploy(self.t.real, self.base)).base_dir
        note(f"base directory {self.base_abs}")

    # --- jobs -----------------------------------------------------------------------------------
    @precondition(lambda self: len(self.jobs) < 8)
    @rule(code=st.sampled_from([0, 0, 1, 3]), ignores_term=st.booleans(), child=st.booleans(),
          output=st.booleans(), duration=st.one_of(st.none(), st.sampled_from([0.0, 0.1, 0.5, 1.5])),
          wrapper_clock_behind=st.booleans())
    def submit_job(self, code: int, ignores_term: bool, child: bool, output: bool,
                   duration: float | None = None, wrapper_clock_behind: bool = False) -> None:
        """A job that runs until released (``duration`` None), or ends by itself ``duration``
        seconds after it starts: 0 is over before its wrapper can write ``running``.
        ``wrapper_clock_behind``: its wrapper's clock is an hour behind the host's (the
        CLOCK_STEP fault: every time it records is an hour old)."""
        self.n += 1
        job = f"sm-{self.n}-{uuid.uuid4().hex[:6]}"
        rel = f"{self.base_abs}/rel-{job}"
        script = "".join([
            "trap '' TERM; " if ignores_term else "",
            "sleep 300 & " if child else "",
            f"echo output of {job}; echo more >&2; " if output else "",
            f"while [ ! -e {shlex.quote(rel)} ]; do sleep 0.05; done; " if duration is None else
            f"sleep {duration}; " if duration else "",
            f"exit {code}",
        ])
        truth = Truth(job, code, ignores_term, submitted=time.monotonic())
        self.jobs[job] = truth
        if duration is not None:
            # it cannot have ended by itself before it started: from the submission on, and
            # ``duration`` later; until then only a signal can have ended it
            self.released_now(truth, truth.submitted + duration)
        truth.db_faulted = self.db_fault_kind in (Fault.DELETED_DB, Fault.CORRUPT_DB)
        assert self.t is not None
        paused = self.paused
        env = {"JOBKIT_KILL_GRACE": str(KILL_GRACE)}
        if wrapper_clock_behind and (self.clock_shim is not None or not paused):
            if self.clock_shim is None:  # made once per example, on its first use
                handle = HostHandle(self.t.real, self.base_abs, self.host)
                self.clock_shim = self.run(inject(Fault.CLOCK_STEP, handle))
            env.update(self.clock_shim.env)
        timeout = TIMEOUT if paused else 10.0  # a frozen host: the submission must give up in time
        started = time.monotonic()
        try:
            self.run(submit(self.t.real, self.store, HOST, ["sh", "-c", script], job_id=job, base_dir=self.base,
                            env=env, timeout=timeout))
        except LaunchFailed as exc:
            truth.launch = "failed"
            truth.ends.clear()  # provably nothing started: it cannot end by itself either
            note(f"{job}: launch failed: {exc}")
            return
        except OutcomeUnknown as exc:  # on a frozen host, the launch may still happen once it thaws
            truth.launch = "unknown"
            note(f"{job}: outcome unknown: {exc}")
            return
        finally:
            elapsed = time.monotonic() - started
            if paused:
                assert elapsed < timeout + SLACK, f"{job}: submit to a paused host took {elapsed:.2f}s"
        assert not paused, f"{job}: a paused host accepted a job"
        # the wrapper's first state is written at once: wait for it, so later rules act on a
        # running job (a launch cannot be slower than this bound here)
        deadline = time.monotonic() + 15
        while self.sh(f"test -e {self.base_abs}/jobs/{job}.status").exit_status != 0:
            assert time.monotonic() < deadline, f"{job}: no state file 15 s after its launch"
            self.run(asyncio.sleep(0.05))

    def live(self) -> list[str]:
        return sorted(j for j, t in self.jobs.items() if t.launch == "ok")

    def ended_on_host(self, jobs: list[str]) -> set[str]:
        """The jobs whose state file already holds their final state (their end is written:
        nothing done to them from now on changes it). A faulted file counts as not ended."""
        if not jobs:
            return set()
        r = self.sh(f"cd {self.base_abs}/jobs && for j in {' '.join(jobs)}; do "
                    "s=$(sed -n 's/.*\"status\":\"\\([a-z]*\\)\".*/\\1/p' \"$j.status\" 2>/dev/null); "
                    "case $s in completed|failed) echo \"$j\";; esac; done")
        return set(r.stdout.split())

    def released_now(self, t: Truth, at: float) -> None:
        t.released = True
        t.exits_at = at if t.exits_at is None else min(t.exits_at, at)
        if t.launch != "failed" and not t.wrapper_signalled and not t.group_killed:
            t.may_end(t.end_by_itself(), at)
        t.job_dies(at)

    @precondition(lambda self: not self.paused and any(not t.released for t in self.jobs.values()))
    @rule(which=WHICH)
    def release(self, which: int) -> None:
        job = pick(sorted(j for j, t in self.jobs.items() if not t.released), which)
        self.released_now(self.jobs[job], time.monotonic())
        self.sh(f"touch {self.base_abs}/rel-{job}")

    @precondition(lambda self: bool(self.live()))
    @rule(which=WHICH)
    def cancel_job(self, which: int) -> None:
        job = pick(self.live(), which)
        t = self.jobs[job]
        paused = self.paused
        timeout = TIMEOUT if paused else 5.0
        at = time.monotonic()
        try:
            what = self.run(cancel(self.t.real if self.t else None, job, self.base,  # type: ignore[arg-type]
                                   timeout=timeout))
        except JobkitError as exc:
            elapsed = time.monotonic() - at
            note(f"{job}: cancel: {exc} ({elapsed:.2f}s)")
            if paused:
                assert elapsed < timeout + SLACK, f"{job}: cancel on a paused host took {elapsed:.2f}s"
            if getattr(exc, "sent", False) or isinstance(exc, OutcomeUnknown):
                # it reached the host, which may run it once it thaws: TERM to the wrapper, or
                # the session killed when its state file is unreadable
                t.signalled(15, at, certain=False)
                if job in self.file_faults:
                    t.signalled(1, at, certain=False)
            return
        assert not paused, f"{job}: a paused host answered a cancel: {what}"
        note(f"{job}: cancel: {what}")
        if what == "signalled-wrapper":
            t.signalled(15, at)
        elif what == "killed-session":  # its pane's process, the wrapper, gets SIGHUP
            t.signalled(1, at)

    @precondition(lambda self: not self.paused and bool(self.live()))
    @rule(which=WHICH)
    def sigkill_wrapper(self, which: int) -> None:
        job = pick(self.live(), which)
        pid, start = self.state_field(job, "wrapper_pid"), self.state_field(job, "wrapper_start")
        if pid is None or start is None:
            return
        ended = job in self.ended_on_host([job])
        # only while that pid is still this wrapper (its start time): never a later process's
        r = self.sh(f"l=; {{ read -r l </proc/{pid}/stat; }} 2>/dev/null; set -f; set -- ${{l##*') '}}; "
                    f"[ \"$#\" -ge 20 ] && shift 19 && [ \"$1\" = {start} ] && kill -s KILL {pid} 2>/dev/null")
        if r.exit_status == 0:
            t = self.jobs[job]
            t.wrapper_killed = True
            t.recorder_gone = t.recorder_gone or not ended

    @precondition(lambda self: not self.paused and bool(self.live()))
    @rule(which=WHICH)
    def sigkill_group(self, which: int) -> None:
        job = pick(self.live(), which)
        pgid = self.state_field(job, "pgid")
        if pgid is None:
            return
        t = self.jobs[job]
        ended = job in self.ended_on_host([job])
        at = time.monotonic()
        r = self.sh(f"kill -s KILL -- -{pgid} 2>/dev/null || kill -s KILL -{pgid} 2>/dev/null")
        if r.exit_status == 0 and not ended:
            t.group_killed = True
            if not t.wrapper_signalled:
                t.may_end(("failed", 137), at)
            t.job_dies(at)

    @precondition(lambda self: not self.paused and bool(self.live()))
    @rule(which=WHICH, server=st.booleans())
    def kill_tmux(self, which: int, server: bool) -> None:
        handle = HostHandle(self.t.real if self.t else None, self.base_abs, self.host)  # type: ignore[arg-type]
        # a server kill reaches every wrapper still in it: an uncertain launch's too
        victims = sorted(j for j, t in self.jobs.items() if t.launch != "failed") if server \
            else [pick(self.live(), which)]
        ended = self.ended_on_host(victims)
        at = time.monotonic()
        try:
            self.run(inject(Fault.KILL_TMUX_SERVER if server else Fault.KILL_TMUX_SESSION, handle,
                            job_id=victims[0]))
        except JobkitError as exc:
            note(f"kill tmux: {exc}")
            return
        for job in victims:  # the pane's process is the wrapper: SIGHUP, unless it wrote its end already
            if job not in ended:  # an uncertain launch may not have been running (yet): maybe
                t = self.jobs[job]
                t.signalled(1, at, certain=t.launch == "ok")

    # --- faults -------------------------------------------------------------------------------
    @precondition(lambda self: not self.paused and self.db_fault is None)
    @rule(name=st.sampled_from(["LOCKED_DB", "DELETED_DB", "CORRUPT_DB"]))
    def break_database(self, name: str) -> None:
        kind = Fault[name]
        handle = HostHandle(self.t.real if self.t else None, self.base_abs, self.host)  # type: ignore[arg-type]
        inj = self.run(inject(kind, handle, seconds=2))
        self.db_fault, self.db_fault_kind = inj, kind
        if kind is not Fault.LOCKED_DB:
            for t in self.jobs.values():
                t.db_faulted = True

    @precondition(lambda self: not self.paused and bool([j for j in self.live() if j not in self.file_faults]))
    @rule(which=WHICH, name=st.sampled_from(["DELETED_STATE_FILE", "GARBAGE_STATE_FILE", "TRUNCATED_STATE_FILE"]))
    def break_state_file(self, which: int, name: str) -> None:
        kind = Fault[name]
        job = pick([j for j in self.live() if j not in self.file_faults], which)
        handle = HostHandle(self.t.real if self.t else None, self.base_abs, self.host)  # type: ignore[arg-type]
        try:
            self.file_faults[job] = self.run(inject(kind, handle, job_id=job))
        except JobkitError as exc:
            note(f"{job}: {kind.name}: {exc}")
            return
        # restoring puts back the copy taken now: a later record written meanwhile is replaced
        self.jobs[job].file_faulted = True

    @precondition(lambda self: not self.paused and (self.db_fault is not None or bool(self.file_faults)))
    @rule(everything=st.booleans())
    def lift_faults(self, everything: bool) -> None:
        if self.db_fault is not None and (everything or not self.file_faults):
            self.run(self.db_fault.restore())
            self.db_fault = self.db_fault_kind = None
        for job in list(self.file_faults)[: None if everything else 1]:
            self.run(self.file_faults.pop(job).restore())

    @precondition(lambda self: not self.paused)
    @rule()
    def pause_host(self) -> None:
        """The host freezes (a paused container, a stalled network) until :meth:`resume_host`
        (or the teardown): meanwhile submissions, cancels and reconciliations run against it,
        each bounded, unavailable, changing nothing but staleness."""
        if self.host.local is not None:
            self.host.local.pause(limit=PAUSE_LIMIT)
        else:
            self.host.container.get_wrapped_container().pause()
        self.paused, self.paused_at = True, time.monotonic()

    @precondition(lambda self: self.paused)
    @rule()
    def resume_host(self) -> None:
        self._resume()

    def _resume(self) -> None:
        if not self.paused:
            return
        if self.host.local is not None:
            self.host.local.resume()
        else:
            self.host.container.get_wrapped_container().unpause()
        self.paused = False
        self._wait_until_it_answers()

    def _wait_until_it_answers(self) -> None:
        """A host just thawed may drop the first new connections: the connections attempted while
        it was frozen are all pending at once in its sshd, which then drops new ones at random
        (MaxStartups). The product's calls meet that as an unreachable host (stale, no status
        change); the model's own commands (releases, settling, cleanup) wait until one goes
        through, bounded."""
        if self.t is None:
            return
        deadline = time.monotonic() + 60
        while True:
            try:
                self.run(self.t.real.run("true", timeout=5))
                return
            except TransportError as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the host did not answer within 60 s of its resume: {exc}") from exc
                self.run(asyncio.sleep(0.2))

    @precondition(lambda self: self.clock.offset < 2 * 3600)
    @rule()
    def step_client_clock(self) -> None:
        """The client's wall clock jumps one hour ahead (a clock that was behind, stepped right)
        and stays there: submissions, reconciliations, the service and the store's stamps all
        use it, so queued jobs look older than the grace at once. Never back: a step back is a
        known problem (tests/stateful/test_clock_step_back.py), not one to meet at random."""
        self.clock.offset += 3600.0
        self.clock.install()

    @rule()
    def restart_runner(self) -> None:
        if self.late is not None:
            self.collect_late()
        self.close_stores()
        self.open_stores()

    # --- reconciliation -------------------------------------------------------------------------
    @rule(grace_passed=st.booleans())
    def reconcile(self, grace_passed: bool, timeout: float = TIMEOUT) -> None:
        """``grace_passed``: as if the grace period were over (grace 0). The merge measures the
        grace on the host's clock (how long a job has been gone), which no rule can step on a
        shared host: this, not a clock step, is what lets a job gone without a record be
        judged ``lost`` within an example."""
        assert self.t is not None
        quiet = self.late is None  # no other writer in flight: the store's rows can be checked too
        before = {j.id: j for j in self.store.sync.jobs()}
        self.t.calls = 0
        paused = self.paused
        started = time.monotonic()
        report = self.run(reconcile_host(self.t, self.store, HOST, base_dir=self.base,
                                         grace=0.0 if grace_passed else 30.0, timeout=timeout))
        elapsed = time.monotonic() - started
        note(f"reconcile ({'grace passed' if grace_passed else 'now'}): reachable={report.reachable} "
             f"{elapsed:.2f}s " + "; ".join(v.log_line() for v in report.verdicts))
        self.check_report(report, "reconcile", self.t.calls, elapsed, timeout, paused=paused)
        if quiet and not report.reachable:
            for rec in self.store.sync.jobs():
                if rec.id in before and rec.id not in report.superseded:
                    assert rec.status is before[rec.id].status, f"{rec.id}: status changed on an unreachable host"
                    if rec.status.value in ("queued", "running", "lost"):
                        assert rec.stale, f"{rec.id}: not marked stale"

    def check_report(self, report: HostReport, who: str, calls: int, elapsed: float, timeout: float, *,
                     paused: bool) -> None:
        """What every reconciliation must do, the main client's and the late one's alike: one
        round trip per host, back within timeout + 1 s, nothing of a job lost on the host but
        what faults destroyed, and a host that did not answer changes no status (every verdict
        is the status it was computed from, marked stale). ``paused``: the host was frozen for
        the whole call, so it cannot have answered."""
        assert calls == 1, f"{who}: {calls} round trips for one host"
        assert elapsed < timeout + SLACK, f"{who} took {elapsed:.2f}s (bound {timeout}+{SLACK})"
        self.check_host_kept(report.vanished, who)
        if paused:
            assert not report.reachable, f"{who}: a paused host answered"
        if not report.reachable:
            for v in report.verdicts:
                was = report.before[v.job_id]
                assert v.stale, f"{who}: {v.log_line()}: not stale on an unreachable host"
                assert v.status is was.status, f"{who}: {was.status.value} -> {v.log_line()} on an unreachable host"
                assert v.exit_code == was.exit_code, f"{who}: exit {was.exit_code} -> {v.log_line()} (unreachable)"

    @precondition(lambda self: self.late is None)
    @rule(delay=st.sampled_from([0.3, 1.0, 2.0, 4.0]), service=st.booleans())
    def start_late_reconcile(self, delay: float, service: bool) -> None:
        """A second client on the same store whose answers arrive late (4 s: never within its
        bound): a CLI reconcile, or a tick of the reconciliation service (which writes as of the
        tick's start)."""
        assert self.t_late is not None
        self.late_delay = delay
        late = self.late_transport = LateAnswers(self.t_late, delay)
        coro: Any
        if service:
            svc = ReconcileService(self.stores[1], lambda _name: late, timeout=LATE_TIMEOUT)
            coro = svc.tick()
        else:
            coro = reconcile_host(late, self.stores[1], HOST, base_dir=self.base, timeout=LATE_TIMEOUT)
        self.late = self.loop.create_task(self.timed(coro))
        self.late_started = time.monotonic()

    @precondition(lambda self: self.late is not None)
    @rule()
    def collect_late(self) -> None:
        assert self.late is not None
        assert self.late_transport is not None
        result, elapsed = self.run(self.late)
        self.late = None
        who = f"late {'service tick' if isinstance(result, Tick) else 'reconcile'} ({self.late_delay:g}s late)"
        if isinstance(result, Tick):
            note(f"{who}: {result.as_dict()} drifts={[d.line() for d in result.drifts]} in {elapsed:.2f}s")
            assert not result.hosts_failed, f"{who}: a host's reconciliation raised: {result.hosts_failed}"
            if not result.reports:  # the tick found no active job: no host to ask
                assert self.late_transport.calls == 0, f"{who}: {self.late_transport.calls} calls for no host"
                assert elapsed < LATE_TIMEOUT + SLACK, f"{who} took {elapsed:.2f}s"
                return
            assert len(result.reports) == 1, f"{who}: {len(result.reports)} host reports for one host"
            report = result.reports[0]
        else:
            assert isinstance(result, HostReport), f"{who}: {result!r}"
            note(f"{who}: reachable={result.reachable} superseded={result.superseded} in {elapsed:.2f}s")
            report = result
        # frozen since before it started, and still: it cannot have had an answer
        paused = self.paused and self.paused_at <= self.late_started
        self.check_report(report, who, self.late_transport.calls, elapsed, LATE_TIMEOUT, paused=paused)

    # --- what must always hold ------------------------------------------------------------------
    @invariant()
    def no_verdict_contradicts_the_truth(self) -> None:
        if not self.stores:
            return
        recs = self.store.sync.jobs()
        now = time.monotonic()  # after the read: every record read existed by then
        for rec in recs:
            t = self.jobs.get(rec.id)
            if t is None or not rec.status.final:
                continue
            allowed = t.allowed_finals(now)
            assert (rec.status.value, rec.exit_code) in allowed, (
                f"{rec.id}: recorded {rec.status.value} (exit {rec.exit_code}: {rec.reason}) but by now it can only "
                f"have ended {sorted(allowed, key=str) or 'not at all yet'} ({t})")

    @invariant()
    def nothing_is_lost(self) -> None:
        """Every submitted job has a store row and a history (a launch that provably failed may
        have neither). The host's side — a record of every job unless a fault destroyed both —
        is checked on what each reconciliation saw (``vanished``: the host answered and holds
        nothing of the job), in :meth:`check_host_kept`: a query to the host after every step
        would cost a round trip per step, and a slow host query per step is what the bounded CI
        run cannot afford."""
        if not self.stores:
            return
        rows = {r.id for r in self.store.sync.jobs()}
        with_history = {e.job_id for e in self.store.sync.history_entries()}
        for job, t in self.jobs.items():
            if t.launch == "failed" and job not in rows:
                continue
            assert job in rows, f"{job}: no store row ({t})"
            assert job in with_history, f"{job}: no history ({t})"

    def check_host_kept(self, vanished: list[str], who: str) -> None:
        for job in vanished:
            t = self.jobs.get(job)
            assert t is not None, f"{who}: a job the model does not know: {job}"
            assert t.launch != "ok" or t.at_risk, (  # an uncertain launch may never have started
                f"{job}: {who} found nothing of it on the host, and no fault destroyed both its records ({t})")

    @invariant()
    def no_impossible_transition(self) -> None:
        if not self.stores:
            return
        bad = check_history(self.store.sync.history_entries())
        assert not bad, "; ".join(v.line() for v in bad)

    # --- the end: lift everything, let every job end, then every verdict must be the truth ------
    def teardown(self) -> None:
        try:
            if self.t is not None and self.stores:
                self._settle_and_check()
        finally:
            self._cleanup()

    def _settle_and_check(self) -> None:
        self._resume()
        if self.late is not None:
            self.collect_late()
        if self.db_fault is not None or self.file_faults:
            self.lift_faults(everything=True)
        at = time.monotonic()
        for t in self.jobs.values():
            if not t.released:
                self.released_now(t, at)
        self.sh(f"for j in {' '.join(self.jobs) or 'none'}; do touch {self.base_abs}/rel-$j; done")
        deadline = time.monotonic() + 30
        while not self._all_done():
            assert time.monotonic() < deadline, "wrappers or jobs still running 30 s after every job was released"
            self.run(asyncio.sleep(0.1))
        for _ in range(2):
            self.reconcile(grace_passed=True, timeout=SETTLE_TIMEOUT)
            assert self.stores
            assert self.t is not None
        recs = {r.id: r for r in self.store.sync.jobs()}
        for job, t in self.jobs.items():
            rec = recs.get(job)
            if t.launch == "failed" and rec is None:
                continue
            assert rec is not None, f"{job}: no store row"
            assert self.store.sync.history(job), f"{job}: no history"
            got = (rec.status.value, rec.exit_code)
            if rec.status is JobStatus.LOST:
                assert t.lost_allowed(), f"{job}: lost although its end was recorded: {rec.reason} ({t})"
            else:
                assert got in t.allowed_finals(), f"{job}: {got} ({rec.reason}), the truth: {t}"
        # the host still has a record of every job a fault did not destroy, and agrees
        assert self.t is not None
        result = self.run(probe(self.t.real, [JobQuery(j) for j in self.jobs], self.base, SETTLE_TIMEOUT))
        assert result.host.reachable, result.host.error
        for job, t in self.jobs.items():
            ev = result.evidence[job]
            has = (ev.file is not None and ev.file.state == "ok") or (ev.db is not None and ev.db.state == "ok")
            if t.launch == "ok" and not t.at_risk:
                assert has, f"{job}: no host record left"
        tokens = {r.id: r.token for r in recs.values()}
        bad = check_history(self.store.sync.history_entries(), host_records(result.evidence, tokens))
        assert not bad, "; ".join(v.line() for v in bad)

    def _all_done(self) -> bool:
        """No wrapper and no job of the example runs any more: a job whose wrapper was killed
        lives on until it ends by itself (the probe tells a process from a later one behind the
        same pid by its start time)."""
        assert self.t is not None
        known = {r.id: r for r in self.store.sync.jobs()}
        queries = [JobQuery(j, known[j].pid, known[j].proc_start) if j in known else JobQuery(j) for j in self.jobs]
        result = self.run(probe(self.t.real, queries, self.base, SETTLE_TIMEOUT))
        if not result.host.reachable:
            return False
        return not any(ev.live.wrapper_alive or ev.live.job_alive for ev in result.evidence.values())

    def _cleanup(self) -> None:
        if self not in self.open_examples:
            return
        self.open_examples.remove(self)
        self.clock.uninstall()
        try:
            self._resume()
            if self.late is not None:
                self.late.cancel()
                self.loop.run_until_complete(asyncio.gather(self.late, return_exceptions=True))
            for inj in [*([self.db_fault] if self.db_fault else []), *self.file_faults.values(),
                        *([self.clock_shim] if self.clock_shim else [])]:
                self.loop.run_until_complete(quietly(inj.restore()))
            if self.t is not None and self.base_abs:
                # every job's group (children included), the tmux server, the base directory
                self.sh(f"b={self.base_abs}; for f in \"$b\"/jobs/*.status; do [ -e \"$f\" ] || continue; "
                        "g=$(sed -n 's/.*\"pgid\":\\([0-9][0-9]*\\).*/\\1/p' \"$f\"); [ -z \"$g\" ] || "
                        "kill -s KILL -- -$g 2>/dev/null || kill -s KILL -$g 2>/dev/null; done; "
                        "tmux -S \"$b/tmux.sock\" kill-server 2>/dev/null; rm -rf \"$b\"; true", timeout=15)
        finally:
            for t in (self.t, self.t_late):
                if t is not None:
                    self.loop.run_until_complete(t.close())
            self.close_stores()
            self.loop.close()
            __import__("shutil").rmtree(self.tmp, ignore_errors=True)
