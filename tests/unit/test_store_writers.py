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
