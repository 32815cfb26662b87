"""The saga log: its schema rules, its state moves, and recovery (walking back, never twice)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from jobkit.errors import StoreError
from jobkit.owner import Owner
from jobkit.sagas import (
    SAGA_MOVES,
    SCHEMA_VERSION,
    Saga,
    SagaError,
    SagaLog,
    SagaState,
    Step,
    StepState,
    recover,
)

pytestmark = pytest.mark.unit
DEAD = Owner(pid=2 ** 22 + 11)  # no such process: its sagas are a crash's leftovers


def test_the_log_is_wal_with_foreign_keys_and_its_own_file(tmp_path: Path) -> None:
    log = SagaLog(tmp_path / "sagas.db")
    assert log._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert log._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert log._db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    with pytest.raises(sqlite3.IntegrityError):
        log._db.execute("INSERT INTO saga_step (saga_id, idx, name, state, started_at) VALUES (99, 0, 'x', "
                        "'running', 1)")
    log.close()


def test_a_newer_schema_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer than this jobkit"):
        SagaLog(path)
    assert path.read_bytes() == before  # not even WAL mode was switched on
    assert not (tmp_path / "sagas.db-wal").exists()


def test_ids_continue_from_the_largest_on_disk_and_a_duplicate_is_an_error(tmp_path: Path) -> None:
    log = SagaLog(tmp_path / "sagas.db")
    assert [log.begin("submit", {"n": i}) for i in range(3)] == [1, 2, 3]
    log.begin("submit", {}, saga_id=10)
    log.close()
    again = SagaLog(tmp_path / "sagas.db")
    assert again.begin("cancel", {}) == 11
    with pytest.raises(SagaError, match="already exists"):
        again.begin("submit", {}, saga_id=2)
    assert again.get(2).input == {"n": 1}  # never overwritten
    again.close()


def test_a_read_error_at_start_is_an_error_never_an_empty_log(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    SagaLog(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE saga_step")
    db.execute("DROP TABLE saga")
    db.execute("CREATE TABLE saga (x)")  # a table without the columns the seeding reads
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="cannot use the saga log"):
        SagaLog(path)
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="not a file"):
        SagaLog(tmp_path / "dir.db")


def test_only_the_table_of_moves_is_possible(tmp_path: Path) -> None:
    log = SagaLog(tmp_path / "sagas.db")
    for start, allowed in SAGA_MOVES.items():
        for target in SagaState:
            sid = log.begin("t", {})
            path = {SagaState.RUNNING: [], SagaState.COMPLETED: [SagaState.COMPLETED],
                    SagaState.FAILED: [SagaState.FAILED],
                    SagaState.COMPENSATING: [SagaState.COMPENSATING],
                    SagaState.COMPENSATED: [SagaState.COMPENSATING, SagaState.COMPENSATED],
                    SagaState.FAILED_COMPENSATION: [SagaState.COMPENSATING, SagaState.FAILED_COMPENSATION]}[start]
            for s in path:
                log.move(sid, s)
            if target in allowed:
                log.move(sid, target)
                assert log.get(sid).state is target
            else:
                with pytest.raises(SagaError, match="illegal move"):
                    log.move(sid, target)
                assert log.get(sid).state is start
    sid = log.begin("t", {})
    log.step_begin(sid, 0, "a")
    log.step_end(sid, 0, StepState.FAILED, error="x")
    with pytest.raises(SagaError, match="illegal move failed -> compensated"):
        log.step_end(sid, 0, StepState.COMPENSATED)
    with pytest.raises(SagaError, match="already exists"):
        log.step_begin(sid, 0, "a")
    with pytest.raises(SagaError, match="no saga"):
        log.step_begin(999, 0, "a")
    log.close()


def _crashed(log: SagaLog, steps: list[tuple[str, StepState]]) -> int:
    sid = log.begin("op", {"x": 1}, owner=DEAD)
    for i, (name, state) in enumerate(steps):
        log.step_begin(sid, i, name, {"i": i})
        if state is not StepState.RUNNING:
            log.step_end(sid, i, state, output={"done": i})
    return sid


def test_recovery_walks_back_in_reverse_and_never_twice(tmp_path: Path) -> None:
    log = SagaLog(tmp_path / "sagas.db")
    undone: list[str] = []

    def undo(name: str):  # type: ignore[no-untyped-def]
        async def run(saga: Saga, step: Step) -> None:
            undone.append(f"{saga.id}:{name}")
        return run

    comp = {("op", n): undo(n) for n in ("a", "b", "c")}
    sid = _crashed(log, [("a", StepState.SUCCEEDED), ("b", StepState.SUCCEEDED), ("c", StepState.RUNNING)])
    live = log.begin("op", {}, owner=Owner.current())  # this process, still running it
    out = asyncio.run(recover(log, comp))
    assert (out.compensated, out.busy, undone) == ([sid], [live], [f"{sid}:c", f"{sid}:b", f"{sid}:a"])
    saga = log.get(sid)
    assert saga.state is SagaState.COMPENSATED
    assert [s.state for s in saga.steps] == [StepState.COMPENSATED] * 3
    again = asyncio.run(recover(log, comp))
    assert (again.compensated, again.failed, undone[3:]) == ([], [], [])  # a third start changes nothing
    log.release(live)
    assert asyncio.run(recover(log, comp)).compensated == [live]  # released: now a leftover
    log.close()


def test_a_failed_compensation_is_recorded_and_resumed_where_it_stopped(tmp_path: Path) -> None:
    log = SagaLog(tmp_path / "sagas.db")
    calls: list[str] = []
    broken = {"b": True}

    async def a(saga: Saga, step: Step) -> None:
        calls.append("a")

    async def b(saga: Saga, step: Step) -> None:
        calls.append("b")
        if broken["b"]:
            raise RuntimeError("host unreachable")

    sid = _crashed(log, [("a", StepState.SUCCEEDED), ("b", StepState.SUCCEEDED), ("c", StepState.SUCCEEDED)])
    comp = {("op", "a"): a, ("op", "b"): b}
    out = asyncio.run(recover(log, comp))
    assert out.failed == [(sid, "compensating failed: host unreachable")]
    saga = log.get(sid)
    assert (saga.state, saga.failure) == (SagaState.FAILED_COMPENSATION, "compensating failed: host unreachable")
    assert [s.state for s in saga.steps] == [StepState.SUCCEEDED, StepState.SUCCEEDED, StepState.COMPENSATED]
    broken["b"] = False
    assert asyncio.run(recover(log, comp)).compensated == [sid]
    assert calls == ["b", "b", "a"]  # c (no compensation) was not redone, b retried, then a
    log.close()


def test_a_saga_left_compensating_resumes_its_walk_back_and_never_compensates_twice(tmp_path: Path) -> None:
    # the process died in the middle of a walk-back (SIGKILL, or Ctrl-C between two compensations):
    # the saga is `compensating`, its newest step already compensated, the older ones not
    log = SagaLog(tmp_path / "sagas.db")
    undone: list[str] = []

    def undo(name: str):  # type: ignore[no-untyped-def]
        async def run(saga: Saga, step: Step) -> None:
            undone.append(name)
        return run

    comp = {("op", n): undo(n) for n in ("a", "b", "c")}
    sid = _crashed(log, [("a", StepState.SUCCEEDED), ("b", StepState.SUCCEEDED), ("c", StepState.SUCCEEDED)])
    log.move(sid, SagaState.FAILED, "c: broke")
    log.move(sid, SagaState.COMPENSATING)
    log.step_end(sid, 2, StepState.COMPENSATED)
    out = asyncio.run(recover(log, comp))
    assert (out.compensated, out.failed, undone) == ([sid], [], ["b", "a"])  # c is not undone again
    saga = log.get(sid)
    assert (saga.state, saga.failure) == (SagaState.COMPENSATED, "c: broke")
    assert [s.state for s in saga.steps] == [StepState.COMPENSATED] * 3
    again = asyncio.run(recover(log, comp))
    assert (again.changed, undone) == (0, ["b", "a"])
    log.close()


def test_an_operation_that_did_complete_is_marked_so_not_walked_back(tmp_path: Path) -> None:
    log = SagaLog(tmp_path / "sagas.db")
    done_sid = _crashed(log, [("a", StepState.SUCCEEDED), ("b", StepState.RUNNING)])
    young_sid = _crashed(log, [("a", StepState.SUCCEEDED)])

    async def completed(saga: Saga) -> bool | None:
        return True if saga.id == done_sid else None

    out = asyncio.run(recover(log, {}, {"op": completed}))
    assert (out.completed, out.busy) == ([done_sid], [young_sid])
    assert log.get(done_sid).state is SagaState.COMPLETED
    assert log.get(young_sid).state is SagaState.RUNNING
    log.close()


class SagaModel(RuleBasedStateMachine):
    """Random sagas, crashes anywhere, recoveries, some compensations failing: every step is
    compensated at most once, in reverse order, and recovery ends with every saga resolved."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory(prefix="jobkit-sagas-")
        self.log = SagaLog(Path(self.dir.name) / "sagas.db")
        self.undone: list[tuple[int, int]] = []
        self.flaky = False

    def teardown(self) -> None:
        self.log.close()
        self.dir.cleanup()

    @rule(steps=st.lists(st.sampled_from([StepState.SUCCEEDED, StepState.RUNNING, StepState.FAILED]),
                         min_size=0, max_size=4), outcome=st.sampled_from(["crash", "failed", "completed"]))
    def run_saga(self, steps: list[StepState], outcome: str) -> None:
        sid = self.log.begin("op", {}, owner=DEAD)
        for i, state in enumerate(steps):
            self.log.step_begin(sid, i, f"s{i}")
            if state is not StepState.RUNNING:
                self.log.step_end(sid, i, state)
            if state is not StepState.SUCCEEDED:
                break
        if outcome == "failed":
            self.log.move(sid, SagaState.FAILED, "test")
        elif outcome == "completed" and all(s is StepState.SUCCEEDED for s in steps):
            self.log.move(sid, SagaState.COMPLETED)

    @rule(flaky=st.booleans())
    def recover(self, flaky: bool) -> None:
        self.flaky = flaky

        async def undo(saga: Saga, step: Step) -> None:
            if self.flaky and step.idx == 1:
                raise RuntimeError("flaky")
            self.undone.append((saga.id, step.idx))

        comp = {("op", f"s{i}"): undo for i in range(4)}
        asyncio.run(recover(self.log, comp))

    @invariant()
    def each_step_undone_at_most_once_newest_first(self) -> None:
        assert len(self.undone) == len(set(self.undone))
        by_saga: dict[int, list[int]] = {}
        for sid, idx in self.undone:
            by_saga.setdefault(sid, []).append(idx)
        for idxs in by_saga.values():
            assert idxs == sorted(idxs, reverse=True)
        for saga in self.log.sagas():
            for s in saga.steps:  # every step has a compensation: compensated means undone
                assert (s.state is StepState.COMPENSATED) == ((saga.id, s.idx) in self.undone), (saga, s)

    @rule()
    def recover_cleanly(self) -> None:
        async def undo(saga: Saga, step: Step) -> None:
            self.undone.append((saga.id, step.idx))

        asyncio.run(recover(self.log, {("op", f"s{i}"): undo for i in range(4)}))
        assert self.log.sagas(unresolved=True) == []


TestSagaModel = SagaModel.TestCase
TestSagaModel.settings = settings(max_examples=40, stateful_step_count=15, deadline=None)


def test_each_step_of_a_submit_and_a_cancel_records_what_it_was_asked_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from jobkit import cli
    from jobkit.backends import LaunchOutcome, LaunchRequest, LaunchState
    from jobkit.hosts import HostSpec
    from jobkit.runner import cancel, submit
    from jobkit.store import AsyncStore, Store

    class Backend:  # a host that does what it is asked (no SSH: the saga's records are under test)
        name = "tmux"

        async def _ok(self, transport: object, req: LaunchRequest, *, timeout: float) -> LaunchOutcome:
            return LaunchOutcome(LaunchState.LAUNCHED)

        prepare = register = start = _ok

        async def cancel(self, transport: object, job_id: str, base_dir: str | None, *, timeout: float) -> str:
            return "signalled-wrapper"

    monkeypatch.setenv("JOBKIT_HOME", str(tmp_path))
    store = AsyncStore(Store(tmp_path / "store.db"))
    store.sync.add_host(HostSpec("h", "127.0.0.1", 22, "u", None, None, "~/.jk"))
    argv = ["sh", "-c", "echo 'a b'"]

    async def go() -> None:
        await submit(None, store, "h", argv, job_id="j1", base_dir="~/.jk", cwd="~/work", env={"K": "v"},  # type: ignore[arg-type]
                     name="n", backend=Backend())  # type: ignore[arg-type]
        await cancel(None, "j1", "~/.jk", backend=Backend(), store=store)  # type: ignore[arg-type]

    asyncio.run(go())
    store.sync.close()
    assert cli.main(["sagas", "--json"]) == 0
    shown = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    where = {"host": "h", "job_id": "j1", "base_dir": "~/.jk"}
    assert [(st["name"], st["input"]) for st in shown["submit"]["steps"]] == [
        ("record_local", {"host": "h", "job_id": "j1", "argv": argv, "name": "n", "cwd": "~/work"}),
        ("prepare", {**where, "cwd": "~/work"}),
        ("register", where),
        ("start", {**where, "argv": argv, "env": {"K": "v"}, "cwd": "~/work"}),
    ]
    assert [(st["name"], st["input"]) for st in shown["cancel"]["steps"]] == [("signal", where)]
