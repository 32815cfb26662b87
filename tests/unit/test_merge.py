"""The pure merge of the reconciliation chain: examples for each rule, properties for all."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobkit.merge import LOST_REASON, SIGKILL_REASON, merge
from jobkit.models import DbEvidence, Evidence, FileEvidence, HostState, JobStatus, Known, Liveness, Source

pytestmark = pytest.mark.unit
UP = HostState(reachable=True, boot_id="boot-a", now_epoch=1000.0)


NOTHING_LIVE = Liveness()


def ev(db: DbEvidence | None = None, file: FileEvidence | None = None, live: Liveness = NOTHING_LIVE,
       host: HostState = UP) -> Evidence:
    return Evidence("j1", host, db, file, live)


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


def test_running_with_the_process_gone_fails_after_the_grace_period() -> None:
    evidence = ev(DbEvidence("ok", "running"), FileEvidence("ok", "running", boot_id="boot-a"),
                  Liveness(job_alive=False, wrapper_alive=False))
    within = merge(evidence, Known(JobStatus.RUNNING, last_alive_epoch=990), grace=30)
    assert within.status is JobStatus.RUNNING
    after = merge(evidence, Known(JobStatus.RUNNING, last_alive_epoch=900), grace=30)
    assert (after.status, after.reason) == (JobStatus.FAILED, SIGKILL_REASON)


def test_a_changed_boot_id_means_the_host_rebooted() -> None:
    v = merge(ev(DbEvidence("ok", "running"), FileEvidence("ok", "running", boot_id="boot-old"),
                 Liveness(job_alive=False)), RUNNING)
    assert v.status is JobStatus.FAILED
    assert "rebooted" in v.reason


def test_an_unreachable_host_keeps_the_last_status_stale_and_never_fails() -> None:
    v = merge(ev(host=HostState(reachable=False, error="timed out")), RUNNING)
    assert (v.status, v.stale, v.source) == (JobStatus.RUNNING, True, Source.NONE)
    assert "unavailable" in v.reason


def test_nothing_anywhere_is_state_lost() -> None:
    v = merge(ev(DbEvidence("no_row"), FileEvidence("missing"), Liveness(job_alive=None, tmux_session=False)),
              Known(JobStatus.QUEUED, submitted_epoch=0))
    assert (v.status, v.reason) == (JobStatus.LOST, LOST_REASON)


def test_queued_with_nothing_on_the_host_fails_as_never_started_after_the_grace() -> None:
    evidence = ev(DbEvidence("ok", "queued"), FileEvidence("missing"), Liveness(tmux_session=False))
    assert merge(evidence, Known(JobStatus.QUEUED, submitted_epoch=990), grace=30).status is JobStatus.QUEUED
    late = merge(evidence, Known(JobStatus.QUEUED, submitted_epoch=900), grace=30)
    assert late.status is JobStatus.FAILED
    assert late.reason.startswith("Job never started")


def test_a_final_status_never_moves_backwards() -> None:
    v = merge(ev(DbEvidence("ok", "running"), FileEvidence("missing"), Liveness(job_alive=True)),
              Known(JobStatus.COMPLETED, exit_code=0))
    assert v.status is JobStatus.COMPLETED


# --- properties -----------------------------------------------------------------------------
statuses = st.sampled_from(["queued", "running", "completed", "failed", "bogus", None])
codes = st.one_of(st.none(), st.integers(0, 255))
dbs = st.one_of(st.none(), st.builds(
    DbEvidence, st.sampled_from(["ok", "ok", "no_row", "missing", "locked", "corrupt", "error"]), statuses, codes,
    st.sampled_from([None, "TERM", "KILL"]), st.none(), st.none(), st.sampled_from([None, "boot-a", "boot-b"])))
files = st.one_of(st.none(), st.builds(
    FileEvidence, st.sampled_from(["ok", "ok", "missing", "invalid"]), statuses, codes, st.none(),
    st.one_of(st.none(), st.integers(1, 99999)), st.none(), st.none(), st.sampled_from([None, "boot-a", "boot-b"])))
lives = st.builds(Liveness, st.sampled_from([None, True, False]), st.sampled_from([None, True, False]),
                  st.sampled_from([None, True, False]))
hosts = st.builds(HostState, st.booleans(), st.none(), st.sampled_from([None, "boot-a", "boot-b"]),
                  st.floats(0, 5000))
knowns = st.builds(Known, st.sampled_from(list(JobStatus)), codes, st.one_of(st.none(), st.floats(0, 5000)),
                   st.one_of(st.none(), st.floats(0, 5000)))
evidences = st.builds(Evidence, st.just("j1"), hosts, dbs, files, lives)


def finals_in(e: Evidence) -> set[JobStatus]:
    out = set()
    if e.db is not None and e.db.state == "ok" and e.db.status in ("completed", "failed"):
        out.add(JobStatus(e.db.status))
    if e.file is not None and e.file.state == "ok" and e.file.status in ("completed", "failed"):
        out.add(JobStatus(e.file.status))
    return out



@given(evidences, knowns)
def test_never_contradicts_a_final_state_present_in_any_source(e: Evidence, known: Known) -> None:
    v = merge(e, known)
    if e.host.reachable and finals_in(e):
        assert v.status in finals_in(e)
    if not e.host.reachable:
        assert (v.status, v.stale) == (known.status, True)



@given(evidences, knowns)
def test_is_deterministic(e: Evidence, known: Known) -> None:
    assert merge(e, known) == merge(e, known)



@given(st.lists(evidences, min_size=1, max_size=8), knowns)
def test_is_monotonic_over_time(seq: list[Evidence], start: Known) -> None:
    known = start
    for e in seq:
        v = merge(e, known)
        if known.status.final:
            assert v.status.final, (known, e, v)
        elif known.status is JobStatus.RUNNING:
            assert v.status is not JobStatus.QUEUED, (known, e, v)
        known = Known(v.status, v.exit_code, known.submitted_epoch,
                      e.host.now_epoch if v.alive else known.last_alive_epoch, known.boot_id)
