"""The pure merge of the reconciliation chain: examples for each rule, properties for all."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobkit.merge import LOST_REASON, NEVER_STARTED_REASON, SIGKILL_REASON, UNKNOWN_EXIT, merge
from jobkit.models import Claim, DbEvidence, Evidence, FileEvidence, HostState, JobStatus, Known, Liveness, Source

pytestmark = pytest.mark.unit
UP = HostState(reachable=True, boot_id="boot-a", now_epoch=1000.0)


NOTHING_LIVE = Liveness()


def ev(db: DbEvidence | None = None, file: FileEvidence | None = None, live: Liveness = NOTHING_LIVE,
       host: HostState = UP, claim: Claim | None = None) -> Evidence:
    return Evidence("j1", host, db, file, live, claim)


RUNNING = Known(JobStatus.RUNNING, submitted_epoch=900, last_alive_epoch=900, boot_id="boot-a")


def test_database_decides_first() -> None:
    v = merge(ev(DbEvidence("ok", "completed", 0), FileEvidence("ok", "completed", 0)), RUNNING)
    assert (v.status, v.source, v.conflict) == (JobStatus.COMPLETED, Source.DATABASE, False)
    assert v.said == {"database": "completed", "state_file": "completed", "liveness": "unknown"}


def test_state_file_decides_when_the_database_is_locked() -> None:
    v = merge(ev(DbEvidence("locked"), FileEvidence("ok", "failed", 143, "TERM")), RUNNING)
    assert (v.status, v.source, v.exit_code, v.signal) == (JobStatus.FAILED, Source.STATE_FILE, 143, "TERM")


def test_a_final_state_file_beats_a_running_row() -> None:
    v = merge(ev(DbEvidence("ok", "running"), FileEvidence("ok", "completed", 0)), RUNNING)
    assert (v.status, v.source) == (JobStatus.COMPLETED, Source.STATE_FILE)


def test_two_different_final_states_are_a_reported_conflict() -> None:
    v = merge(ev(DbEvidence("ok", "completed", 0), FileEvidence("ok", "failed", 1)), RUNNING)
    assert (v.status, v.source, v.conflict) == (JobStatus.COMPLETED, Source.DATABASE, True)
    assert "CONFLICT" in v.reason


def test_liveness_answers_when_both_stores_are_gone() -> None:
    v = merge(ev(DbEvidence("no_row"), FileEvidence("missing"), Liveness(job_alive=True)), RUNNING)
    assert (v.status, v.source) == (JobStatus.RUNNING, Source.LIVENESS)


def test_running_with_the_process_gone_is_lost_after_the_grace_period_never_failed() -> None:
    # nothing recorded how it ended: its exit status is unknown, so it is never presented as failed
    evidence = ev(DbEvidence("ok", "running"), FileEvidence("ok", "running", boot_id="boot-a"),
                  Liveness(job_alive=False, wrapper_alive=False))
    within = merge(evidence, Known(JobStatus.RUNNING, last_alive_epoch=990), grace=30)
    assert within.status is JobStatus.RUNNING
    after = merge(evidence, Known(JobStatus.RUNNING, last_alive_epoch=900), grace=30)
    assert after.status is JobStatus.LOST
    assert after.reason.startswith(SIGKILL_REASON)
    assert UNKNOWN_EXIT in after.reason
    assert after.exit_code is None


def test_a_job_never_seen_alive_gets_the_grace_period_too() -> None:
    # the state file says running (started at 990, host clock), the store never saw it alive
    evidence = ev(DbEvidence("ok", "running"), FileEvidence("ok", "running", started_epoch=990),
                  Liveness(job_alive=False, wrapper_alive=False))
    assert merge(evidence, Known(JobStatus.QUEUED, submitted_epoch=985), grace=30).status is JobStatus.RUNNING
    late = ev(DbEvidence("ok", "running"), FileEvidence("ok", "running", started_epoch=900),
              Liveness(job_alive=False, wrapper_alive=False))
    assert merge(late, Known(JobStatus.QUEUED, submitted_epoch=895), grace=30).status is JobStatus.LOST


def test_a_job_that_outlived_its_killed_wrapper_is_lost_with_what_is_known() -> None:
    alive = merge(ev(DbEvidence("ok", "running"), FileEvidence("ok", "running"),
                     Liveness(job_alive=True, wrapper_alive=False)), RUNNING)
    assert (alive.status, alive.alive, alive.wrapper_gone) == (JobStatus.RUNNING, True, True)
    gone = merge(ev(DbEvidence("ok", "running"), FileEvidence("ok", "running"),
                    Liveness(job_alive=False, wrapper_alive=False)),
                 Known(JobStatus.RUNNING, last_alive_epoch=950, wrapper_gone_epoch=920), grace=30)
    assert gone.status is JobStatus.LOST
    assert "wrapper killed" in gone.reason
    assert "ran until about" in gone.reason
    assert UNKNOWN_EXIT in gone.reason


def test_a_changed_boot_id_means_the_host_rebooted() -> None:
    v = merge(ev(DbEvidence("ok", "running"), FileEvidence("ok", "running", boot_id="boot-old"),
                 Liveness(job_alive=False)), RUNNING)
    assert v.status is JobStatus.LOST  # not running any more, and nothing recorded its end
    assert "rebooted" in v.reason


def test_a_recorded_final_status_is_kept_and_a_contradiction_reported() -> None:
    v = merge(ev(DbEvidence("ok", "failed", 1), FileEvidence("ok", "failed", 1)), Known(JobStatus.COMPLETED, 0))
    assert (v.status, v.exit_code, v.conflict) == (JobStatus.COMPLETED, 0, True)
    assert "CONFLICT" in v.reason


def test_a_host_record_of_another_submission_is_never_this_jobs() -> None:
    theirs = ev(DbEvidence("ok", "completed", 0, token="theirs"), FileEvidence("ok", "completed", 0))
    v = merge(theirs, Known(JobStatus.QUEUED, submitted_epoch=990, token="mine"))
    assert v.status is JobStatus.FAILED
    assert v.reason.startswith(NEVER_STARTED_REASON)
    assert "another submission" in v.reason
    # a row without a token (a foreign wrapper's client) cannot be told apart: it is trusted
    untokened = ev(DbEvidence("ok", "completed", 0), FileEvidence("ok", "completed", 0))
    assert merge(untokened, Known(JobStatus.QUEUED, token="mine")).status is JobStatus.COMPLETED


def test_a_wrapper_that_claimed_the_id_and_vanished_without_state_is_lost() -> None:
    starting = merge(ev(DbEvidence("ok", "queued"), FileEvidence("missing"), Liveness(tmux_session=False),
                        claim=Claim("wrapper", 42, True)), Known(JobStatus.QUEUED, submitted_epoch=990))
    assert starting.status is JobStatus.RUNNING
    vanished = merge(ev(DbEvidence("ok", "queued"), FileEvidence("missing"), Liveness(tmux_session=False),
                        claim=Claim("wrapper", 42, False)), Known(JobStatus.QUEUED, submitted_epoch=990))
    assert vanished.status is JobStatus.LOST


def test_an_unreachable_host_keeps_the_last_status_stale_and_never_fails() -> None:
    v = merge(ev(host=HostState(reachable=False, error="timed out")), RUNNING)
    assert (v.status, v.stale, v.source) == (JobStatus.RUNNING, True, Source.NONE)
    assert "unavailable" in v.reason


def test_nothing_anywhere_is_state_lost() -> None:
    v = merge(ev(DbEvidence("no_row"), FileEvidence("missing"), Liveness(job_alive=None, tmux_session=False)),
              Known(JobStatus.RUNNING, submitted_epoch=0))
    assert (v.status, v.reason) == (JobStatus.LOST, LOST_REASON)


def test_queued_with_nothing_on_the_host_stays_queued_until_fenced_then_never_started() -> None:
    evidence = ev(DbEvidence("ok", "queued"), FileEvidence("missing"), Liveness(tmux_session=False),
                  claim=Claim("absent"))
    for submitted in (990, 0):  # however long ago: without a fence, a launch may still be in flight
        assert merge(evidence, Known(JobStatus.QUEUED, submitted_epoch=submitted), grace=30).status is JobStatus.QUEUED
    fenced = ev(DbEvidence("ok", "queued"), FileEvidence("missing"), Liveness(tmux_session=False),
                claim=Claim("fenced"))
    late = merge(fenced, Known(JobStatus.QUEUED, submitted_epoch=900), grace=30)
    assert late.status is JobStatus.FAILED
    assert late.reason.startswith(NEVER_STARTED_REASON)


def test_a_final_status_never_moves_backwards() -> None:
    v = merge(ev(DbEvidence("ok", "running"), FileEvidence("missing"), Liveness(job_alive=True)),
              Known(JobStatus.COMPLETED, exit_code=0))
    assert v.status is JobStatus.COMPLETED


# --- properties -----------------------------------------------------------------------------
statuses = st.sampled_from(["queued", "running", "completed", "failed", "bogus", None])
codes = st.one_of(st.none(), st.integers(0, 255))
tokens = st.sampled_from([None, "mine", "theirs"])
boots = st.sampled_from([None, "boot-a", "boot-b"])
epochs = st.one_of(st.none(), st.floats(0, 5000))
dbs = st.one_of(st.none(), st.builds(
    DbEvidence, st.sampled_from(["ok", "ok", "no_row", "missing", "locked", "corrupt", "error"]), statuses, codes,
    st.sampled_from([None, "TERM", "KILL"]), st.one_of(st.none(), st.integers(0, 5000)), st.none(), boots,
    st.none(), tokens))
files = st.one_of(st.none(), st.builds(
    FileEvidence, st.sampled_from(["ok", "ok", "missing", "invalid"]), statuses, codes, st.none(),
    st.one_of(st.none(), st.integers(1, 99999)), st.none(), st.none(), boots,
    st.one_of(st.none(), st.integers(0, 5000))))
lives = st.builds(Liveness, st.sampled_from([None, True, False]), st.sampled_from([None, True, False]),
                  st.sampled_from([None, True, False]))
claims = st.one_of(st.none(), st.builds(Claim, st.sampled_from(["absent", "wrapper", "fenced", "other"]),
                                        st.none(), st.sampled_from([None, True, False])))
hosts = st.builds(HostState, st.booleans(), st.none(), boots, st.floats(0, 5000))
knowns = st.builds(Known, st.sampled_from(list(JobStatus)), codes, epochs, epochs, boots, tokens, epochs, epochs)
evidences = st.builds(Evidence, st.just("j1"), hosts, dbs, files, lives, claims)


def foreign(e: Evidence, known: Known) -> bool:
    return bool(e.db is not None and e.db.state == "ok" and e.db.token and known.token and e.db.token != known.token)


def finals_in(e: Evidence) -> set[tuple[JobStatus, int | None]]:
    out = set()
    if e.db is not None and e.db.state == "ok" and e.db.status in ("completed", "failed"):
        out.add((JobStatus(e.db.status), e.db.exit_code))
    if e.file is not None and e.file.state == "ok" and e.file.status in ("completed", "failed"):
        out.add((JobStatus(e.file.status), e.file.exit_code))
    return out


@given(evidences, knowns)
def test_never_contradicts_a_final_state_present_in_any_source(e: Evidence, known: Known) -> None:
    v = merge(e, known)
    if not e.host.reachable:
        assert (v.status, v.stale) == (known.status, True)
    elif known.status.final:
        assert (v.status, v.exit_code) == (known.status, known.exit_code)
    elif finals_in(e) and not foreign(e, known):
        assert (v.status, v.exit_code) in finals_in(e)


@given(evidences, knowns)
def test_never_guesses_an_outcome(e: Evidence, known: Known) -> None:
    """A final verdict comes from a record of the end (a source, or the store already), or is the
    fact "never started" (the id fenced on the host, or taken by another submission); an exit code
    is never invented."""
    v = merge(e, known)
    if not v.status.final:
        assert v.exit_code == known.exit_code or v.exit_code is None
        return
    recorded = (v.status, v.exit_code) in finals_in(e) or (v.status, v.exit_code) == (known.status, known.exit_code)
    never_started = v.status is JobStatus.FAILED and v.exit_code is None and (
        foreign(e, known) or (e.claim is not None and e.claim.state == "fenced"))
    assert recorded or never_started, (e, known, v)


@given(evidences, knowns)
def test_is_deterministic(e: Evidence, known: Known) -> None:
    assert merge(e, known) == merge(e, known)


@given(st.lists(evidences, min_size=1, max_size=8), knowns)
def test_is_monotonic_over_time(seq: list[Evidence], start: Known) -> None:
    known = start
    for e in seq:
        v = merge(e, known)
        if known.status.final:
            assert (v.status, v.exit_code) == (known.status, known.exit_code), (known, e, v)
        elif known.status is JobStatus.RUNNING:
            assert v.status is not JobStatus.QUEUED, (known, e, v)
        known = Known(v.status, v.exit_code, known.submitted_epoch,
                      e.host.now_epoch if v.alive else known.last_alive_epoch, known.boot_id, known.token,
                      known.started_epoch,
                      known.wrapper_gone_epoch or (e.host.now_epoch if v.wrapper_gone else None))


# --- every branch, exactly (a mutation of any decision, source or message fails one row) -----------------
ALIVE = Liveness(job_alive=True, wrapper_alive=True, tmux_session=True)
GONE = Liveness(job_alive=False, wrapper_alive=False, tmux_session=False)
DB_RUN, FILE_RUN = DbEvidence("ok", "running", boot_id="boot-a"), FileEvidence("ok", "running", boot_id="boot-a")
Q = Known(JobStatus.QUEUED, submitted_epoch=995)
BRANCHES = [
    # (evidence, known, status, source, exit, flags, said, reason starts with)
    (ev(host=HostState(False, "timed out")), RUNNING, JobStatus.RUNNING, Source.NONE, None, "stale",
     {"host": "unavailable"}, "Host unavailable (timed out)"),
    (ev(DbEvidence("ok", "completed", 0, token="t2")), Known(JobStatus.QUEUED, token="t1"), JobStatus.FAILED,
     Source.DATABASE, None, "", {"database": "another submission's row", "state_file": "not asked",
                                 "liveness": "unknown"}, NEVER_STARTED_REASON + ": the id is used"),
    (ev(DbEvidence("ok", "completed", 0, token="t2")), Known(JobStatus.FAILED, 4, token="t1"), JobStatus.FAILED,
     Source.NONE, 4, "", {"database": "another submission's row", "state_file": "not asked", "liveness": "unknown"},
     "failed already recorded; the host's record"),
    (ev(DbEvidence("ok", "failed", 2, "TERM"), FileEvidence("ok", "failed", 2)), RUNNING, JobStatus.FAILED,
     Source.DATABASE, 2, "", {"database": "failed", "state_file": "failed", "liveness": "unknown"},
     "failed (exit 2) per database"),
    (ev(DbEvidence("locked"), FileEvidence("ok", "completed", 0), GONE), RUNNING, JobStatus.COMPLETED,
     Source.STATE_FILE, 0, "", {"database": "locked", "state_file": "completed", "liveness": "gone"},
     "completed (exit 0) per state_file"),
    (ev(DbEvidence("ok", "failed", 1), FileEvidence("ok", "failed", 1)), Known(JobStatus.COMPLETED, 0),
     JobStatus.COMPLETED, Source.NONE, 0, "conflict",
     {"database": "failed", "state_file": "failed", "liveness": "unknown"}, "completed (exit 0) already recorded"),
    (ev(DB_RUN, FILE_RUN, ALIVE), Known(JobStatus.FAILED, 3), JobStatus.FAILED, Source.NONE, 3, "",
     {"database": "running", "state_file": "running", "liveness": "alive"}, "failed already recorded; no source"),
    (ev(DB_RUN, FileEvidence("ok", "running", boot_id="boot-z"), GONE), RUNNING, JobStatus.LOST, Source.LIVENESS,
     None, "", {"database": "running", "state_file": "running", "liveness": "gone", "boot": "changed"},
     "Host rebooted while the job was running"),
    (ev(DB_RUN, FILE_RUN, Liveness(True, False, True)), RUNNING, JobStatus.RUNNING, Source.DATABASE, None,
     "alive wrapper_gone", {"database": "running", "state_file": "running", "liveness": "alive"},
     "running; process alive, but its wrapper is gone"),
    (ev(DbEvidence("missing"), FILE_RUN, ALIVE), RUNNING, JobStatus.RUNNING, Source.STATE_FILE, None, "alive",
     {"database": "missing", "state_file": "running", "liveness": "alive"}, "running; process alive"),
    (ev(DbEvidence("no_row"), FileEvidence("missing"), ALIVE), RUNNING, JobStatus.RUNNING, Source.LIVENESS, None,
     "alive", {"database": "no_row", "state_file": "missing", "liveness": "alive"}, "running; process alive"),
    (ev(DB_RUN, FILE_RUN, Liveness(None, None, None)), RUNNING, JobStatus.RUNNING, Source.DATABASE, None, "",
     {"database": "running", "state_file": "running", "liveness": "unknown"}, "running per the record; liveness"),
    (ev(DB_RUN, FILE_RUN, Liveness(False, True, True)), RUNNING, JobStatus.RUNNING, Source.DATABASE, None, "",
     {"database": "running", "state_file": "running", "liveness": "gone"}, "job process gone, wrapper still"),
    (ev(DbEvidence("locked"), FILE_RUN, GONE), Known(JobStatus.RUNNING, last_alive_epoch=990), JobStatus.RUNNING,
     Source.STATE_FILE, None, "", {"database": "locked", "state_file": "running", "liveness": "gone"},
     "process gone for 10s, within the 30s grace"),
    (ev(DbEvidence("no_row"), FileEvidence("missing"), GONE), Known(JobStatus.RUNNING, last_alive_epoch=990),
     JobStatus.RUNNING, Source.NONE, None, "", {"database": "no_row", "state_file": "missing", "liveness": "gone"},
     "process gone for 10s"),
    (ev(DB_RUN, FILE_RUN, GONE), Known(JobStatus.RUNNING, last_alive_epoch=960, wrapper_gone_epoch=950),
     JobStatus.LOST, Source.LIVENESS, None, "", {"database": "running", "state_file": "running", "liveness": "gone"},
     "wrapper killed (gone by 1970-01-01T00:15:50Z); the job ran until about 1970-01-01T00:16:00Z; exit status"),
    (ev(DB_RUN, FILE_RUN, GONE), Known(JobStatus.RUNNING, last_alive_epoch=960), JobStatus.LOST, Source.LIVENESS,
     None, "", {"database": "running", "state_file": "running", "liveness": "gone"}, SIGKILL_REASON + ": wrapper"),
    (ev(DbEvidence("ok", "queued"), FileEvidence("missing"), Liveness(None, None, True)), Q, JobStatus.RUNNING,
     Source.LIVENESS, None, "", {"database": "queued", "state_file": "missing", "liveness": "unknown"},
     "tmux session present"),
    (ev(DbEvidence("ok", "queued"), FileEvidence("missing"), GONE, claim=Claim("wrapper", 9, True)), Q,
     JobStatus.RUNNING, Source.LIVENESS, None, "", {"database": "queued", "state_file": "missing", "liveness": "gone",
                                                   "claim": "wrapper"}, "wrapper starting"),
    (ev(DbEvidence("ok", "queued"), FileEvidence("missing"), GONE, claim=Claim("wrapper", 9, False)), Q,
     JobStatus.LOST, Source.NONE, None, "", {"database": "queued", "state_file": "missing", "liveness": "gone",
                                             "claim": "wrapper"}, "a wrapper claimed the id and is gone"),
    (ev(DbEvidence("ok", "queued"), FileEvidence("missing"), GONE, claim=Claim("other")), Q, JobStatus.LOST,
     Source.NONE, None, "", {"database": "queued", "state_file": "missing", "liveness": "gone", "claim": "other"},
     "the id is claimed on the host but its claim is empty"),
    (ev(DbEvidence("ok", "queued"), FileEvidence("missing"), GONE, claim=Claim("fenced")), Q, JobStatus.FAILED,
     Source.NONE, None, "", {"database": "queued", "state_file": "missing", "liveness": "gone", "claim": "fenced"},
     NEVER_STARTED_REASON + " (nothing on the host"),
    (ev(DbEvidence("ok", "queued"), FileEvidence("missing"), GONE, claim=Claim("absent")), Q, JobStatus.QUEUED,
     Source.DATABASE, None, "", {"database": "queued", "state_file": "missing", "liveness": "gone"},
     "queued; nothing started"),
    (ev(DbEvidence("no_row"), FileEvidence("missing"), GONE), Q, JobStatus.QUEUED, Source.NONE, None, "",
     {"database": "no_row", "state_file": "missing", "liveness": "gone"}, "queued; nothing started"),
    (ev(DbEvidence("no_row"), FileEvidence("invalid"), GONE), Q, JobStatus.LOST, Source.NONE, None, "",
     {"database": "no_row", "state_file": "invalid", "liveness": "gone"}, LOST_REASON),
    (ev(None, None, Liveness()), Known(JobStatus.LOST), JobStatus.LOST, Source.NONE, None, "",
     {"database": "not asked", "state_file": "not asked", "liveness": "unknown"}, LOST_REASON),
]


@pytest.mark.parametrize(("e", "known", "status", "source", "code", "flags", "said", "reason"), BRANCHES,
                         ids=[f"{i}-{b[2].value}" for i, b in enumerate(BRANCHES)])
def test_every_branch_exactly(e: Evidence, known: Known, status: JobStatus, source: Source, code: int | None,
                              flags: str, said: dict[str, str], reason: str) -> None:
    v = merge(e, known, grace=30)
    assert (v.job_id, v.status, v.source, v.exit_code) == ("j1", status, source, code)
    assert (v.stale, v.conflict, v.alive, v.wrapper_gone) == tuple(f in flags.split() for f in
                                                                   ("stale", "conflict", "alive", "wrapper_gone"))
    assert v.said == said
    assert v.reason.startswith(reason), v.reason


def test_the_grace_period_ends_exactly_at_grace() -> None:
    evidence = ev(DB_RUN, FILE_RUN, GONE)
    assert merge(evidence, Known(JobStatus.RUNNING, last_alive_epoch=970.5), grace=30).status is JobStatus.RUNNING
    assert merge(evidence, Known(JobStatus.RUNNING, last_alive_epoch=970), grace=30).status is JobStatus.LOST
    # measured from the recorded start when the store never saw it alive (the latest of them)
    started = ev(DbEvidence("ok", "running", started_epoch=900),
                 FileEvidence("ok", "running", started_epoch=980), GONE)
    assert merge(started, Known(JobStatus.QUEUED, started_epoch=901), grace=30).status is JobStatus.RUNNING
    assert merge(started, Known(JobStatus.QUEUED), grace=15).status is JobStatus.LOST


@given(evidences, knowns)
def test_every_verdict_is_well_formed(e: Evidence, known: Known) -> None:
    v = merge(e, known)
    assert v.job_id == e.job_id
    assert isinstance(v.status, JobStatus)
    assert isinstance(v.source, Source)
    assert isinstance(v.reason, str)
    assert v.reason
    assert all(isinstance(k, str) and isinstance(x, str) for k, x in v.said.items())
    if e.host.reachable:
        assert {"database", "state_file", "liveness"} <= set(v.said)
        assert not v.stale
    else:
        assert v.said == {"host": "unavailable"}
    assert not v.alive or (e.live.job_alive is True and v.status is JobStatus.RUNNING)
    assert not v.wrapper_gone or (v.alive and e.live.wrapper_alive is False)
