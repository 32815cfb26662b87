"""The SLURM backend's pure parts: the state table, the parsers (generated squeue/sacct output,
and anything else: an unparsable line is reported, never a state) and the verdict rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobkit.backends.base import LaunchRequest
from jobkit.backends.slurm import (
    STATE_MAP,
    AcctRow,
    QueueRow,
    SlurmState,
    batch_script,
    merge_slurm,
    parse_exit_code,
    parse_probe,
    parse_sacct,
    parse_squeue,
    read_cancel,
    resource_args,
    slurm_state,
)
from jobkit.errors import ConfigError
from jobkit.models import (
    Claim,
    Evidence,
    FileEvidence,
    HostState,
    JobStatus,
    Known,
    SchedulerEvidence,
    Source,
)
from jobkit.probe import JobQuery, ProbeResult

pytestmark = pytest.mark.unit

HOST = HostState(reachable=True, now_epoch=1_000_000.0)
STATES = [s for s in SlurmState if s is not SlurmState.UNKNOWN]
ids = st.from_regex(r"[1-9][0-9]{0,7}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


# --- the table ------------------------------------------------------------------------------
def test_every_state_of_the_issue_is_mapped_and_nothing_else_is_guessed() -> None:
    listed = [
        "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
        "RESIZING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT", "COMPLETED",
        "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY",
        "REVOKED"
    ]
    assert set(STATE_MAP) == set(SlurmState)
    for name in listed:
        assert slurm_state(name) is SlurmState(name)
    assert slurm_state("CANCELLED by 1100") is SlurmState.CANCELLED
    assert slurm_state("CANCELLED+") is SlurmState.CANCELLED
    assert STATE_MAP[SlurmState.TIMEOUT].status is JobStatus.TIMEOUT  # never completed
    assert STATE_MAP[SlurmState.REQUEUED].status is JobStatus.PENDING
    assert STATE_MAP[slurm_state("WHATEVER")].status is None
    assert STATE_MAP[SlurmState.REVOKED].status is None
    # the tmux meaning of completed/failed is untouched; the new finals are final
    for s in ("cancelled", "timeout", "node_fail", "preempted", "out_of_memory", "boot_fail", "deadline"):
        assert JobStatus(s).final
    assert not JobStatus.PENDING.final


@given(st.integers(0, 255), st.integers(0, 255))
def test_exit_code_round_trips(rc: int, sig: int) -> None:
    assert parse_exit_code(f"{rc}:{sig}") == (rc, sig)


@given(st.text(max_size=12))
def test_exit_code_is_strict(text: str) -> None:
    got = parse_exit_code(text)
    if got is not None:
        assert text.strip() == f"{got[0]}:{got[1]}" or text.strip().lstrip("0") != ""


# --- parsers --------------------------------------------------------------------------------
queue_rows = st.lists(st.tuples(ids, st.sampled_from(STATES), st.sampled_from(["None", "Resources", "Priority",
                                                                                "BeginTime", "NodeDown"]),
                                st.text(alphabet="ab|_ -", min_size=1, max_size=10)), max_size=20)


@given(queue_rows)
def test_squeue_rows_round_trip(rows: list[tuple[str, SlurmState, str, str]]) -> None:
    text = "\n".join(f"{i}|{s.value}|{r}|{n}" for i, s, r, n in rows)
    got = parse_squeue(text)
    # the name is last: a foreign job's name may hold anything, '|' included
    assert not got.unparsable
    assert [(r.job_id, r.state, r.reason, r.name) for r in got.rows if isinstance(r, QueueRow)] == \
        [(i, s.value, r, n) for i, s, r, n in rows]


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40), max_size=10))
def test_squeue_garbage_is_reported_never_a_state(lines: list[str]) -> None:
    got = parse_squeue("\n".join(lines))
    for row in got.rows:
        assert isinstance(row, QueueRow)
        assert row.state.isupper() or "_" in row.state
        assert row.job_id[0].isdigit()
    nonblank = [ln for ln in "\n".join(lines).splitlines() if ln.strip()]
    assert len(got.rows) + len(got.unparsable) == len(nonblank)


acct_rows = st.lists(st.tuples(ids, st.sampled_from([*[s.value for s in STATES], "CANCELLED by 1100"]),
                               st.integers(0, 255), st.integers(0, 255), names), max_size=20)


@given(acct_rows)
def test_sacct_rows_round_trip(rows: list[tuple[str, str, int, int, str]]) -> None:
    text = "\n".join(f"{i}|{s}|{rc}:{sig}|{n}" for i, s, rc, sig, n in rows)
    got = parse_sacct(text)
    assert not got.unparsable
    assert [(r.job_id, r.state, r.exit, r.name) for r in got.rows if isinstance(r, AcctRow)] == \
        [(i, s, (rc, sig), n) for i, s, rc, sig, n in rows]


@pytest.mark.parametrize("line", ["12|COMPLETED|0|x", "12|COMPLETED|x:0|n", "abc|FAILED|1:0|n", "12|failed|1:0|n",
                                  "Slurm accounting storage is disabled", "12|TIMEOUT"])
def test_sacct_unparsable_lines(line: str) -> None:
    got = parse_sacct(line)
    assert got.unparsable == [line]
    assert not got.rows


def _probe(squeue: str, sacct: str, files: str = "", squeue_rc: int = 0, sacct_rc: int = 0) -> str:
    return (f"==now 1000000\n==boot b\n==squeue\n{squeue}\n==squeue_rc {squeue_rc}\n==sacct\n{sacct}\n"
            f"==sacct_rc {sacct_rc}\n==files\n{files}\n==end\n")


def test_probe_picks_this_submission_and_reports_the_unreadable() -> None:
    out = _probe("7|COMPLETED|None|j1\n9|RUNNING|None|j1\nnonsense line\n", "7|COMPLETED|0:0|j1",
                 'j1.submit:tok 7\nj1.status:{"id":"j1"}\n')
    ev = parse_probe(out, [JobQuery("j1")]).evidence["j1"]
    assert ev.scheduler is not None
    assert (ev.scheduler.queue, ev.scheduler.queue_state, ev.scheduler.scheduler_id) == ("listed", "COMPLETED", "7")
    assert ev.scheduler.unparsable == ("nonsense line",)
    # without a recorded id: the newest job of that name
    ev = parse_probe(_probe("7|COMPLETED|None|j2\n9|RUNNING|None|j2", ""), [JobQuery("j2")]).evidence["j2"]
    assert ev.scheduler is not None
    assert ev.scheduler.queue_state == "RUNNING"


def test_probe_tells_the_controller_down_from_an_empty_queue() -> None:
    down = parse_probe(_probe("squeue: error: Unable to contact slurm controller (connect failure)", "",
                              squeue_rc=1, sacct_rc=1), [JobQuery("j")]).evidence["j"]
    assert down.scheduler is not None
    assert down.scheduler.queue == "error"
    assert "Unable to contact" in down.scheduler.detail
    empty = parse_probe(_probe("", ""), [JobQuery("j")]).evidence["j"]
    assert empty.scheduler is not None
    assert empty.scheduler.queue == "absent"
    cut = parse_probe("==now 1\n==squeue\n", [JobQuery("j")])
    assert not cut.host.reachable


def _sched(res: ProbeResult, job: str) -> SchedulerEvidence:
    s = res.evidence[job].scheduler
    assert s is not None
    return s


def test_an_unparsable_line_that_may_be_a_jobs_is_no_information_for_it() -> None:
    files = "j1.submit:t 7\nj2.submit:t 8\nj3.submit:t 9\n"
    queries = [JobQuery("j1"), JobQuery("j2"), JobQuery("j3")]
    # its id readable: no information for that job (with the line), the others as the queue says
    res = parse_probe(_probe("7|RUNNING|None|j1\n8|RUNN!NG|None|j2", "", files), queries)
    assert (_sched(res, "j1").queue, _sched(res, "j1").queue_state) == ("listed", "RUNNING")
    assert _sched(res, "j2").queue == "error"
    assert "8|RUNN!NG|None|j2" in _sched(res, "j2").detail
    assert _sched(res, "j3").queue == "absent"  # the line is job 8's, not 9's
    # a line naming no job: no information for every job the queue does not list
    res = parse_probe(_probe("7|RUNNING|None|j1\nsqueue: error: something odd", "", files), queries)
    assert _sched(res, "j1").queue == "listed"
    for j in ("j2", "j3"):
        assert _sched(res, j).queue == "error"
        assert "something odd" in _sched(res, j).detail
    # and so its verdict is the last known status, stale: never lost, never a status from elsewhere
    v = merge_slurm(res.evidence["j3"], RUNNING, grace=30)
    assert (v.status, v.stale) == (JobStatus.RUNNING, True), v
    # by name (no scheduler id recorded): a line of that name
    res = parse_probe(_probe("5|PEND ING|None|j4\n", ""), [JobQuery("j4"), JobQuery("j5")])
    assert _sched(res, "j4").queue == "error"
    assert _sched(res, "j5").queue == "absent"
    # sacct likewise: the job's own unreadable accounting line is no information, not "no record"
    res = parse_probe(_probe("", "8|COMPLETED|x:0|j2\n9|FAILED|3:0|j3"), queries)
    assert _sched(res, "j2").accounting == "error"
    assert "8|COMPLETED|x:0|j2" in _sched(res, "j2").detail
    assert (_sched(res, "j3").accounting, _sched(res, "j3").acct_state) == ("ok", "FAILED")
    assert _sched(res, "j1").accounting == "absent"
    res = parse_probe(_probe("", "garbage\n9|FAILED|3:0|j3"), queries)
    assert _sched(res, "j1").accounting == "error"
    assert _sched(res, "j3").accounting == "ok"


def _garble(kind: int, sid: str, state: str, tail: str, name: str) -> str:
    """A line of this job that cannot be read: its state, its tail cut off, or its id broken."""
    return [f"{sid}|{state.lower()}!|{tail}|{name}", f"{sid}|{state[:3]}", f"{sid}x|{state}|{tail}|{name}"][kind]


def _untold(plan: list[tuple[SlurmState, int, int, bool]], garbage: list[str], i: int) -> bool:
    """Whether an unreadable line may be job i's (which is not in the answer)."""
    return bool(garbage) or (not plan[i][3] and any(w == 1 and h == 1 for _, w, h, _ in plan))


free_garbage = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="|="),
                       min_size=1, max_size=30).filter(lambda s: any(c.isalpha() for c in s))  # names no job
#: per job: (its SLURM state, where it is: 0 listed, 1 its line garbled, 2 not there; how garbled;
#: whether its scheduler id is recorded)
job_plan = st.tuples(st.sampled_from(STATES), st.integers(0, 2), st.integers(0, 2), st.booleans())


def _injected(plan: list[tuple[SlurmState, int, int, bool]], garbage: list[str], rnd: object,
              tail: str) -> tuple[str, list[JobQuery], str]:
    """The answer lines (shuffled, garbage among them), the queries and the submit records for
    ``plan``: each job listed, its line garbled, or not there."""
    import random

    assert isinstance(rnd, random.Random)
    lines, queries, files = [], [], []
    for i, (state, where, how, with_sid) in enumerate(plan):
        jid, sid = f"g{i}", str(100 + i)
        files.append(f"{jid}.submit:t {sid}" if with_sid else "")
        queries.append(JobQuery(jid))
        if where == 0:
            lines.append(f"{sid}|{state.value}|{tail}|{jid}")
        elif where == 1:
            lines.append(_garble(how, sid, state.value, tail, jid))
    lines += garbage
    rnd.shuffle(lines)
    return "\n".join(lines), queries, "\n".join(f for f in files if f)


@given(st.lists(job_plan, min_size=1, max_size=8), st.lists(free_garbage, max_size=3), st.randoms())
def test_squeue_with_garbage_injected_never_gives_a_job_a_state_it_was_not_given(
        plan: list[tuple[SlurmState, int, int, bool]], garbage: list[str], rnd: object) -> None:
    answer, queries, files = _injected(plan, garbage, rnd, "None")
    res = parse_probe(_probe(answer, "", files), queries)
    for i, (state, where, how, _) in enumerate(plan):
        s = res.evidence[f"g{i}"].scheduler
        assert s is not None
        if where == 0:
            assert (s.queue, s.queue_state) == ("listed", state.value), s
        elif where == 1:
            assert s.queue == "error", s  # its own line unreadable: no information, the line reported
            assert _garble(how, str(100 + i), state.value, "None", f"g{i}") in s.unparsable
            assert s.detail.startswith("squeue: unparsable"), s
            assert merge_slurm(res.evidence[f"g{i}"], RUNNING, grace=0).status is JobStatus.RUNNING
        else:
            # absent only when every unreadable line can be told to be another job's (a line cut
            # short names only an id: another job's for a job whose id is recorded, anyone's else)
            assert s.queue == ("error" if _untold(plan, garbage, i) else "absent"), s


@given(st.lists(job_plan, min_size=1, max_size=8), st.lists(free_garbage, max_size=3), st.randoms())
def test_sacct_with_garbage_injected_never_gives_a_job_a_state_it_was_not_given(
        plan: list[tuple[SlurmState, int, int, bool]], garbage: list[str], rnd: object) -> None:
    answer, queries, files = _injected(plan, garbage, rnd, "3:0")
    res = parse_probe(_probe("", answer, files), queries)
    for i, (state, where, how, _) in enumerate(plan):
        s = res.evidence[f"g{i}"].scheduler
        assert s is not None
        if where == 0:
            assert (s.accounting, s.acct_state, s.acct_exit) == ("ok", state.value, 3), s
        elif where == 1:
            assert s.accounting == "error", s
            assert _garble(how, str(100 + i), state.value, "3:0", f"g{i}") in s.unparsable
            assert "sacct: unparsable" in s.detail, s
        else:
            assert s.accounting == ("error" if _untold(plan, garbage, i) else "absent"), s


# --- verdicts -------------------------------------------------------------------------------
def ev(queue: str = "absent", qstate: str | None = None, acct: str = "absent", astate: str | None = None,
       aexit: tuple[int, int] | None = None, file: FileEvidence | None = None, claim: str = "wrapper",
       sid: str | None = "5", host: HostState = HOST) -> Evidence:
    sched = SchedulerEvidence(queue, qstate, None, acct, astate, aexit[0] if aexit else None,
                              aexit[1] if aexit else None, sid, "Unable to contact slurm controller"
                              if queue == "error" else "")
    return Evidence("j", host, None, file or FileEvidence("missing"), claim=Claim(claim), scheduler=sched)


RUNNING = Known(JobStatus.RUNNING, submitted_epoch=1.0, started_epoch=2.0)
W_RUN = FileEvidence("ok", "running", pid=5)


def done(status: str, code: int, sig: str | None = None) -> FileEvidence:
    return FileEvidence("ok", status, code, sig)


def test_not_in_the_queue_is_never_by_itself_completed() -> None:
    v = merge_slurm(ev(file=W_RUN), RUNNING, grace=30)
    assert v.status is JobStatus.LOST
    assert v.exit_code is None
    v = merge_slurm(ev(file=FileEvidence("missing")), RUNNING, grace=30)
    assert v.status is JobStatus.LOST
    # with the wrapper's final record it is that record's, from the state file
    v = merge_slurm(ev(file=done("completed", 0)), RUNNING, grace=30)
    assert (v.status, v.source) == (JobStatus.COMPLETED, Source.STATE_FILE)


def test_controller_down_and_accounting_down_are_no_information() -> None:
    v = merge_slurm(ev(queue="error", file=done("completed", 0)), RUNNING, grace=30)
    assert (v.status, v.stale) == (JobStatus.RUNNING, True)
    v = merge_slurm(ev(queue="error", acct="error"), RUNNING, grace=30)
    assert (v.status, v.stale) == (JobStatus.RUNNING, True)
    # accounting lagging behind the queue: still running (within grace, nothing guessed)
    fresh = Known(JobStatus.RUNNING, submitted_epoch=1.0, started_epoch=HOST.now_epoch - 1)
    v = merge_slurm(ev(acct="ok", astate="RUNNING", file=W_RUN), fresh, grace=30)
    assert v.status is JobStatus.RUNNING


def test_timeout_is_never_completed_and_cancel_is_cancelled() -> None:
    v = merge_slurm(ev("listed", "TIMEOUT", "ok", "TIMEOUT", (0, 0), done("failed", 143, "TERM")), RUNNING, grace=30)
    assert (v.status, v.exit_code, v.signal, v.conflict) == (JobStatus.TIMEOUT, 143, "TERM", False)
    v = merge_slurm(ev("absent", None, "ok", "TIMEOUT", (0, 0)), RUNNING, grace=30)
    assert v.status is JobStatus.TIMEOUT
    v = merge_slurm(ev("listed", "CANCELLED", "ok", "CANCELLED by 1100", (0, 15)), RUNNING, grace=30)
    assert (v.status, v.signal) == (JobStatus.CANCELLED, "TERM")


def test_requeued_goes_back_to_pending_even_with_a_final_record_of_the_first_run() -> None:
    v = merge_slurm(ev("listed", "PENDING", file=done("failed", 143, "TERM")), RUNNING, grace=30)
    assert v.status is JobStatus.PENDING
    assert "requeued" in v.reason
    v = merge_slurm(ev("listed", "REQUEUED"), RUNNING, grace=30)
    assert v.status is JobStatus.PENDING


def test_final_state_against_the_wrapper_is_a_conflict_won_by_the_stronger_record() -> None:
    v = merge_slurm(ev("absent", None, "ok", "COMPLETED", (0, 0), done("failed", 3)), RUNNING, grace=30)
    assert (v.status, v.exit_code, v.conflict, v.source) == (JobStatus.FAILED, 3, True, Source.STATE_FILE)
    # the scheduler killed it, the wrapper saw the signal: the scheduler's end, no conflict
    v = merge_slurm(ev("absent", None, "ok", "NODE_FAIL", (0, 9), done("failed", 137, "KILL")), RUNNING, grace=30)
    assert (v.status, v.conflict) == (JobStatus.NODE_FAIL, False)
    # the job ended by itself just before the kill: the wrapper saw its exit
    v = merge_slurm(ev("absent", None, "ok", "TIMEOUT", (0, 0), done("completed", 0)), RUNNING, grace=30)
    assert (v.status, v.conflict) == (JobStatus.COMPLETED, True)


def test_fenced_id_is_never_started() -> None:
    known = Known(JobStatus.QUEUED, submitted_epoch=1.0)
    v = merge_slurm(ev(claim="fenced", sid=None), known, grace=30)
    assert (v.status, v.exit_code) == (JobStatus.FAILED, None)
    assert "never started" in v.reason
    v = merge_slurm(ev("absent", None, "ok", "FAILED", (67, 0), claim="fenced"), known, grace=30)
    assert v.status is JobStatus.FAILED
    assert "never started" in v.reason


known_st = st.sampled_from(list(JobStatus))
queue_st = st.sampled_from(["listed", "absent", "error"])
state_st = st.sampled_from([*[s.value for s in SlurmState], "CANCELLED by 0", "BOGUS"])
file_st = st.one_of(st.just(FileEvidence("missing")), st.just(FileEvidence("invalid")), st.just(W_RUN),
                    st.builds(done, st.sampled_from(["completed", "failed"]), st.integers(0, 255),
                              st.sampled_from([None, "TERM", "KILL"])))


@given(known_st, queue_st, state_st, st.sampled_from(["ok", "absent", "disabled", "error"]), state_st,
       st.tuples(st.integers(0, 255), st.integers(0, 64)), file_st, st.sampled_from(["absent", "wrapper", "fenced"]),
       st.booleans())
def test_properties_of_every_verdict(known: JobStatus, queue: str, qstate: str, acct: str, astate: str,
                                     aexit: tuple[int, int], file: FileEvidence, claim: str,
                                     reachable: bool) -> None:
    k = Known(known, exit_code=0 if known.final else None, submitted_epoch=1.0, started_epoch=2.0)
    host = HOST if reachable else HostState(reachable=False, error="down")
    e = ev(queue, qstate if queue == "listed" else None, acct, astate if acct == "ok" else None, aexit, file, claim,
           host=host)
    v = merge_slurm(e, k, grace=30)
    # a final status never moves
    if known.final:
        assert (v.status, v.exit_code) == (known, k.exit_code)
    # no answer from the host, or from the queue with no final record in accounting: the last known status
    acct_final = acct == "ok" and (m := STATE_MAP[slurm_state(astate)].status) is not None and m.final
    # (a fenced id with no state file is a fact: it never started)
    if not reachable or (queue == "error" and not known.final and not acct_final and claim != "fenced"):
        assert v.status is known
    # completed only when a record of a clean end says so, never from absence alone
    if v.status is JobStatus.COMPLETED and not known.final:
        sched_says = (queue == "listed" and slurm_state(qstate) is SlurmState.COMPLETED) or \
            (acct == "ok" and slurm_state(astate) is SlurmState.COMPLETED)
        assert sched_says or (file.state == "ok" and file.status == "completed")
    # an unknown state is no information: never a final from it alone
    if queue == "listed" and qstate == "BOGUS" and acct != "ok" and v.status.final and not known.final:
        assert (file.state == "ok" and file.status in ("completed", "failed")) or claim == "fenced"


# --- submit ---------------------------------------------------------------------------------
def test_resources_are_checked_and_mapped() -> None:
    assert resource_args({"time": "1:00", "cpus": "2", "mem": "500M", "partition": "debug"}) == [
        "--time=1:00", "--cpus-per-task=2", "--mem=500M", "--partition=debug"]
    for bad in ({"time": "soon"}, {"cpus": "0"}, {"mem": "lots"}, {"partition": "a b"}, {"gpus": "1"}):
        with pytest.raises(ConfigError):
            resource_args(bad)


def test_batch_script_runs_the_wrapper_without_a_database() -> None:
    s = batch_script(LaunchRequest("j1", ["sh", "-c", "echo 'a b'; exit 3"], env={"X": "1 2"}))
    assert "JOBKIT_DB=none JOBKIT_OUTPUT=files 'X=1 2'" in s
    assert "SLURM_RESTART_COUNT" in s  # a requeued run moves the previous run's files aside
    assert s.rstrip().endswith("j1 sh -c 'echo '\"'\"'a b'\"'\"'; exit 3'")


# --- cancel ---------------------------------------------------------------------------------
UP = "==ping 0\nSlurmctld(primary) at ctl is UP\n"


@pytest.mark.parametrize(("stdout", "kind"), [
    (UP + "==scancel 0 12\nscancel: Terminating job 12\n", "sent"),
    # scancel exits 0 for these two: only its -v output tells them from a cancel
    (UP + "==scancel 0 12\nscancel: Terminating job 12\n"
     "scancel: error: Kill job error on job id 12: Invalid job id specified\n", "gone"),
    (UP + "==scancel 0 12\nscancel: Terminating job 12\n"
     "scancel: error: Kill job error on job id 12: Job/step already completing or completed\n", "ended"),
    ("==ping 1\nSlurmctld(primary) at ctl is DOWN\n", "down"),
    (UP + "==scancel 8 12\nscancel: Terminating job 12\n"
     "scancel: error: Kill job error on job id 12: Unable to contact slurm controller (connect failure)\n", "down"),
    (UP + "==scancel 8 12\nscancel: Terminating job 12\n"
     "scancel: error: Kill job error on job id 12: Socket timed out on send/recv operation\n", "unknown"),
    (UP + "==scancel 1 12\nscancel: error: Kill job error on job id 12: Access/permission denied\n", "error"),
    (UP + "==scancel 0 12\nsomething else entirely\n", "sent"),
    (UP + "==squeue 1\nslurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", "down"),
    (UP + "==not-found\n", "not_found"),
    (UP + "==scancel-name 0 j1\nscancel: Terminating job 12\n", "sent"),
    ("==ping 127\nsh: 1: scontrol: not found\n", "error"),  # not a controller down
    ("", "error"),  # no answer to read: never a cancel
])
def test_cancel_answers_are_told_apart(stdout: str, kind: str) -> None:
    got = read_cancel(stdout)
    assert got.kind == kind, got
    if kind in ("gone", "ended", "down", "unknown", "error"):
        assert got.detail, got


def test_cancel_of_a_purged_job_or_with_the_controller_down() -> None:
    import asyncio

    from jobkit.backends.slurm import SlurmBackend
    from jobkit.errors import SchedulerUnreachable
    from jobkit.transport import CommandResult

    class Canned:
        host_name = "cl"

        def __init__(self, out: str) -> None:
            self.out = out

        async def run(self, command: str, **kw: object) -> CommandResult:
            return CommandResult(command, 0, self.out, "", 0.0)

    gone = UP + ("==scancel 0 12\nscancel: Terminating job 12\n"
                 "scancel: error: Kill job error on job id 12: Invalid job id specified\n")
    what = asyncio.run(SlurmBackend().cancel(Canned(gone), "j1", None, timeout=5))  # type: ignore[arg-type]
    assert "no longer in the controller" in what
    assert "nothing to cancel" in what
    down = "==ping 1\nSlurmctld(primary) at ctl is DOWN\n"
    with pytest.raises(SchedulerUnreachable, match=r"controller does not answer.*nothing was cancelled"):
        asyncio.run(SlurmBackend().cancel(Canned(down), "j1", None, timeout=5))  # type: ignore[arg-type]


def test_probe_reads_the_completion_log_answer() -> None:
    out = ("==now 1000000\n==boot b\n==squeue\n\n==squeue_rc 0\n==sacct\n==sacct_mode completion_log\n"
           "12|FAILED|4:0|na2\n==sacct_rc 0\n==files\n==end\n")
    ev = parse_probe(out, [JobQuery("na2")]).evidence["na2"]
    assert ev.scheduler is not None
    assert (ev.scheduler.accounting, ev.scheduler.acct_state, ev.scheduler.acct_exit) == ("ok", "FAILED", 4)


# --- the store ------------------------------------------------------------------------------
def test_the_scheduler_statuses_in_the_store(tmp_path: Path) -> None:
    import sqlite3

    from jobkit.hosts import HostSpec
    from jobkit.models import Verdict
    from jobkit.store import Store, Update

    s = Store(tmp_path / "store.db")
    try:
        s.add_host(HostSpec("cl", "127.0.0.1", 22, "u", tmp_path / "k", None, scheduler="slurm", partition="debug"))
        assert (s.host("cl").scheduler, s.host("cl").partition) == ("slurm", "debug")
        s.add_job("j", "cl", ["true"], now=1.0)
        since = 2.0
        for st_, code in ((JobStatus.RUNNING, None), (JobStatus.PENDING, None), (JobStatus.RUNNING, None),
                          (JobStatus.TIMEOUT, 143)):
            s.apply([Update(Verdict("j", st_, Source.SCHEDULER, "x", exit_code=code), s.job("j").version)], now=since)
            since += 1
        assert [h.status for h in s.history_entries("j")] == ["queued", "running", "pending", "running", "timeout"]
        assert s.away_summary(2.0)["timeout"] == ["j"]
        s.set_scheduler_id("j", "42")
        assert s.job("j").scheduler_job_id == "42"
    finally:
        s.close()
    # the database itself refuses to move a scheduler's final status
    db = sqlite3.connect(tmp_path / "store.db")
    with pytest.raises(sqlite3.IntegrityError, match="final status never changes"):
        db.execute("UPDATE jobs SET status = 'running', version = version + 1 WHERE id = 'j'")
    db.close()


# --- the library picks the host's backend -----------------------------------------------------
class Recording:
    """A transport that answers every command like a SLURM login node that took it."""

    host_name = "cl"

    def __init__(self) -> None:
        self.commands: list[str] = []

    async def run(self, command: str, *, stdin: str | None = None, timeout: float = 5.0,
                  check: bool = False) -> object:
        from jobkit.transport import CommandResult

        self.commands.append(command + (stdin or ""))
        if "scontrol ping" in command:
            out = UP + "==scancel 0 42\nscancel: Terminating job 42\n"
        elif "==squeue" in command:  # the probe
            out = _probe("42|RUNNING|None|lj1", "", "lj1.submit:t 42\n")
        else:
            out = "submitted 42"
        return CommandResult(command, 0, out, "", 0.0)

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("partition", ["debug", None])
def test_the_library_uses_the_hosts_scheduler_and_partition(tmp_path: Path, partition: str | None) -> None:
    import asyncio

    from jobkit.hosts import HostSpec
    from jobkit.reconcile import reconcile_host
    from jobkit.runner import cancel, submit
    from jobkit.store import AsyncStore, Store

    store = AsyncStore(Store(tmp_path / "store.db"))
    try:
        store.sync.add_host(HostSpec("cl", "127.0.0.1", 22, "u", tmp_path / "k", None, scheduler="slurm",
                                     partition=partition))
        t = Recording()

        async def go() -> tuple[str, list[str]]:
            await submit(t, store, "cl", ["true"], job_id="lj1")  # type: ignore[arg-type]
            sent = list(t.commands)
            await cancel(t, "lj1", store=store)  # type: ignore[arg-type]
            report = await reconcile_host(t, store, "cl")  # type: ignore[arg-type]
            return report.verdicts[0].status.value, sent

        status, sent = asyncio.run(go())
        start = next(c for c in sent if "sbatch" in c and "--parsable" in c)
        assert ("--partition=debug" in start) is (partition is not None)
        assert any("scancel" in c for c in t.commands[len(sent):])
        assert status == "running"  # read from squeue by the SLURM backend's probe
        assert store.sync.job("lj1").scheduler_job_id == "42"
        # an explicit partition wins over the host's
        t2 = Recording()
        asyncio.run(submit(t2, store, "cl", ["true"], job_id="lj2", resources={"partition": "big"}))  # type: ignore[arg-type]
        assert any("--partition=big" in c for c in t2.commands)
        assert not any("--partition=debug" in c for c in t2.commands)
    finally:
        store.sync.close()
