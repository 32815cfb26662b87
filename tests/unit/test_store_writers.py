"""Several writers on one store: a verdict lands only over the row it was computed from, and a
final status never moves, whoever writes (scenarios, then a hypothesis state machine that
interleaves two stores on one file)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from jobkit.errors import StoreError
from jobkit.hosts import HostSpec
from jobkit.models import JobStatus, Source, Verdict
from jobkit.store import Store, Update

pytestmark = pytest.mark.unit
HOST = HostSpec("h", "127.0.0.1", 22, "u", Path("/k"), "ssh-ed25519 AAAA")


def verdict(job: str, status: JobStatus, code: int | None = None) -> Verdict:
    return Verdict(job, status, Source.DATABASE, f"{status.value} per test", exit_code=code)


def two_stores(tmp_path: Path) -> tuple[Store, Store]:
    a = Store(tmp_path / "store.db")
    a.add_host(HOST)
    return a, Store(tmp_path / "store.db")


def test_a_verdict_computed_from_an_older_row_is_not_written(tmp_path: Path) -> None:
    a, b = two_stores(tmp_path)
    a.add_job("j", "h", ["true"], now=1.0)
    seen_by_slow = b.job("j").version  # the slow reconciler reads the row, then probes for seconds
    a.apply([Update(verdict("j", JobStatus.RUNNING), a.job("j").version)])
    a.apply([Update(verdict("j", JobStatus.COMPLETED, 0), a.job("j").version)])
    late = b.apply([Update(verdict("j", JobStatus.RUNNING), seen_by_slow)])  # its answer arrives late
    assert (late.changed, late.superseded) == (0, ["j"])
    assert b.job("j").status is JobStatus.COMPLETED
    assert [h[0] for h in a.history("j")] == ["queued", "running", "completed"]
    a.close()
    b.close()


def test_a_verdict_from_evidence_older_than_the_rows_last_change_is_not_written(tmp_path: Path) -> None:
    # the service writes as of its tick's start: a row changed after that (here between the
    # tick's start and its read of the row, so the version it read is current) keeps the newer view
    a, b = two_stores(tmp_path)
    a.add_job("j", "h", ["true"], now=1.0)
    tick_started = time.time()
    a.apply([Update(verdict("j", JobStatus.RUNNING), a.job("j").version)], now=tick_started + 1)
    read = b.job("j")  # the tick reads the row after that write
    late = b.apply([Update(verdict("j", JobStatus.RUNNING), read.version, {}, tick_started)])
    assert (late.changed, late.superseded) == (0, ["j"])
    fresh = b.apply([Update(verdict("j", JobStatus.COMPLETED, 0), read.version, {}, tick_started + 2)])
    assert (fresh.changed, fresh.superseded) == (1, [])
    a.close()
    b.close()


def test_the_database_itself_refuses_to_move_a_final_status(tmp_path: Path) -> None:
    a, _ = two_stores(tmp_path)
    a.add_job("j", "h", ["true"])
    a.apply([Update(verdict("j", JobStatus.FAILED, 3), 0)])
    raw = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    for sql in ("UPDATE jobs SET status = 'running', version = version + 1",
                "UPDATE jobs SET exit_code = 0, version = version + 1",
                "UPDATE jobs SET status = 'completed', exit_code = 0, version = version + 1"):
        with pytest.raises(sqlite3.IntegrityError, match="a final status never changes"):
            raw.execute(sql)
    with pytest.raises(sqlite3.IntegrityError, match="advances its version"):
        raw.execute("UPDATE jobs SET reason = 'x'")
    a.add_job("r", "h", ["true"])
    a.apply([Update(verdict("r", JobStatus.RUNNING), 0)])
    with pytest.raises(sqlite3.IntegrityError, match="never goes back to queued"):
        raw.execute("UPDATE jobs SET status = 'queued', version = version + 1 WHERE id = 'r'")
    raw.close()
    with pytest.raises(StoreError, match="refusing to replace final"):
        a.apply([Update(verdict("j", JobStatus.RUNNING), a.job("j").version)])
    assert not a.mark_failed_launch("j", "late")  # only ever over a queued row
    assert (a.job("j").status, a.job("j").exit_code) == (JobStatus.FAILED, 3)
    a.close()


def test_a_store_migrated_from_version_1_keeps_its_jobs(tmp_path: Path) -> None:
    from jobkit.store import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for stmt in MIGRATIONS[0]:
        db.execute(stmt)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO hosts VALUES ('h', 'a', 22, 'u', '/k', NULL, NULL)")
    db.execute("INSERT INTO jobs (id, host, command, status, created_at, updated_at) VALUES "
               "('old', 'h', '[\"true\"]', 'completed', 1, 1)")
    db.close()
    s = Store(path)
    rec = s.job("old")
    assert (rec.status, rec.version, rec.token) == (JobStatus.COMPLETED, 0, None)
    s.close()


class TwoWriters(RuleBasedStateMachine):
    """Two stores on one file (a service and a CLI side by side), each applying verdicts computed
    from rows it read at some earlier point. Whatever the interleaving: a write lands only over the
    very row it was computed from, no history goes backwards from a final status, and what the
    store holds is always one of the verdicts written."""

    jobs = Bundle("jobs")
    reads = Bundle("reads")

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="jobkit-writers-")
        path = Path(self._dir.name) / "store.db"
        first = Store(path)
        first.add_host(HOST)
        self.stores = [first, Store(path)]
        self.n = 0
        self.final: dict[str, tuple[JobStatus, int | None]] = {}

    def teardown(self) -> None:
        for s in self.stores:
            s.close()
        self._dir.cleanup()

    @rule(target=jobs)
    def submit(self) -> str:
        self.n += 1
        job = f"j{self.n}"
        self.stores[self.n % 2].add_job(job, "h", ["true"])
        return job

    @rule(target=reads, job=jobs, who=st.integers(0, 1))
    def read(self, job: str, who: int) -> tuple[str, int, int, JobStatus, float]:
        observed = time.time()
        rec = self.stores[who].job(job)
        return (job, who, rec.version, rec.status, observed)

    @rule(seen=consumes(reads), status=st.sampled_from(list(JobStatus)), code=st.sampled_from([None, 0, 1, 143]))
    def apply_late(self, seen: tuple[str, int, int, JobStatus, float], status: JobStatus, code: int | None) -> None:
        job, who, version, was, observed = seen
        if (was.final and status is not was) or (was is JobStatus.RUNNING and status is JobStatus.QUEUED):
            return  # the merge never asks this (its rules 3 and "never backwards"); the database would refuse it
        store = self.stores[who]
        before = store.job(job)
        result = store.apply([Update(verdict(job, status, code if status.final else None), version, {}, observed)])
        after = store.job(job)
        if before.version != version:
            assert result.superseded == [job]
            assert (after.status, after.version) == (before.status, before.version)
        else:
            assert after.status is status
            assert after.version == version + 1
        if after.status.final:
            self.final.setdefault(job, (after.status, after.exit_code))

    @rule(job=jobs, who=st.integers(0, 1))
    def launch_failed(self, job: str, who: int) -> None:
        was = self.stores[who].job(job).status
        assert self.stores[who].mark_failed_launch(job, "test") == (was is JobStatus.QUEUED)
        if was is JobStatus.QUEUED:
            self.final.setdefault(job, (JobStatus.FAILED, None))

    @invariant()
    def the_history_checker_finds_nothing(self) -> None:
        from jobkit.history import check_history

        assert [v.line() for v in check_history(self.stores[0].history_entries())] == []

    @invariant()
    def finals_never_move(self) -> None:
        for job, (status, code) in self.final.items():
            rec = self.stores[0].job(job)
            assert (rec.status, rec.exit_code) == (status, code)
            hist = [h[0] for h in self.stores[1].history(job)]
            first_final = next(i for i, h in enumerate(hist) if JobStatus(h).final)
            assert all(h == status.value for h in hist[first_final:]), hist


TestTwoWriters = TwoWriters.TestCase
TestTwoWriters.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_a_verdict_writes_every_field_it_carries_and_keeps_what_it_does_not(tmp_path: Path) -> None:
    a, _ = two_stores(tmp_path)
    a.add_job("j", "h", ["sleep", "9"], now=100.0, token="tok")
    alive = Verdict("j", JobStatus.RUNNING, Source.STATE_FILE, "running; process alive", stale=False, alive=True,
                    wrapper_gone=True)
    r = a.apply([Update(alive, 0, {"pid": 41, "proc_start": 7, "boot_id": "b", "started_epoch": 95,
                                   "host_now": 150.0}, 120.0)], now=130.0)
    assert (r.changed, r.superseded) == (1, [])
    rec = a.job("j")
    assert (rec.status, rec.status_source, rec.reason, rec.stale, rec.conflict) == (
        JobStatus.RUNNING, "state_file", "running; process alive", False, False)
    assert (rec.pid, rec.proc_start, rec.boot_id, rec.started_at, rec.last_alive_at, rec.wrapper_gone_at) == (
        41, 7, "b", 95, 150.0, 150.0)
    assert (rec.version, rec.token, rec.exit_code, rec.completed_at, rec.command) == (1, "tok", None, None,
                                                                                      ["sleep", "9"])
    # unreachable: stale, last facts kept, wrapper_gone_at and started_at never moved
    stale = Verdict("j", JobStatus.RUNNING, Source.NONE, "Host unavailable", stale=True)
    assert a.apply([Update(stale, 1, {"host_now": None}, 160.0)], now=170.0).changed == 0
    rec = a.job("j")
    assert (rec.stale, rec.pid, rec.last_alive_at, rec.wrapper_gone_at, rec.started_at, rec.version) == (
        True, 41, 150.0, 150.0, 95, 2)
    done = Verdict("j", JobStatus.FAILED, Source.DATABASE, "failed (exit 3) per database", exit_code=3,
                   signal="TERM", conflict=True)
    assert a.apply([Update(done, 2, {"completed_epoch": 190, "host_now": 200.0}, 180.0)], now=210.0).changed == 1
    rec = a.job("j")
    assert (rec.status, rec.exit_code, rec.signal, rec.completed_at, rec.conflict, rec.stale) == (
        JobStatus.FAILED, 3, "TERM", 190, True, False)
    entries = a.history_entries("j")
    assert [(e.status, e.exit_code, e.version, e.observed_at, e.source, e.timestamp) for e in entries] == [
        ("queued", None, 0, 100.0, "client", 100.0), ("running", None, 1, 120.0, "state_file", 130.0),
        ("failed", 3, 3, 180.0, "database", 210.0)]
    assert a.history("j")[2] == ("failed", 210.0, "database", "failed (exit 3) per database")
    a.close()


def test_a_launch_that_started_nothing_is_recorded_and_a_refused_id_forgotten(tmp_path: Path) -> None:
    a, b = two_stores(tmp_path)
    a.add_job("f", "h", ["true"], token="t1")
    assert a.mark_failed_launch("f", "tmux could not start")
    rec = b.job("f")
    assert (rec.status, rec.status_source, rec.reason, rec.version) == (
        JobStatus.FAILED, "client", "launch failed: tmux could not start", 1)
    assert rec.completed_at is not None
    assert [(e.status, e.version) for e in b.history_entries("f")] == [("queued", 0), ("failed", 1)]
    a.add_job("u", "h", ["true"], token="t2")
    assert not a.forget_unlaunched("u", "another token")
    assert a.forget_unlaunched("u", "t2")
    assert [j.id for j in b.jobs()] == ["f"]
    assert b.history_entries("u") == []
    with pytest.raises(Exception, match="unknown job"):
        b.job("u")
    a.close()
    b.close()


def test_unusable_store_paths_are_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot use the store"):
        Store(tmp_path / "file" / "store.db")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="not a file"):
        Store(tmp_path / "dir.db")
    (tmp_path / "garbage.db").write_bytes(b"not a database at all, really" * 100)
    with pytest.raises(StoreError, match="cannot use the store"):
        Store(tmp_path / "garbage.db")


def test_one_superseded_or_unknown_job_never_stops_the_rest_of_a_batch(tmp_path: Path) -> None:
    a, b = two_stores(tmp_path)
    for j in ("x", "y", "z"):
        a.add_job(j, "h", ["true"])
    b.apply([Update(verdict("x", JobStatus.RUNNING), 0)])  # another writer moved x meanwhile
    r = a.apply([Update(verdict("x", JobStatus.LOST), 0), Update(verdict("gone", JobStatus.RUNNING), 0),
                 Update(verdict("y", JobStatus.RUNNING), 0), Update(verdict("z", JobStatus.COMPLETED, 0), 0)])
    assert (r.changed, r.superseded) == (2, ["x"])
    assert [a.job(j).status for j in ("x", "y", "z")] == [JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.COMPLETED]
    with pytest.raises(StoreError, match="refusing to move running back to queued"):
        a.apply([Update(verdict("y", JobStatus.QUEUED), a.job("y").version)])
    assert a.job("y").status is JobStatus.RUNNING
    a.close()
    b.close()
