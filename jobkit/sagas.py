"""The saga log: a durable record of every multi-step operation, in its own SQLite file.

A saga (``submit``, ``cancel``) is a list of steps, each recorded before it runs and after it
ended, with its input and output as JSON. ``sagas.db`` lives beside the job store but has a
connection of its own, so its writes commit independently of the store's. After a crash, every
unresolved saga (``running``, ``compensating``, ``failed``, ``failed_compensation``) is resolved
by :func:`recover`: either it turns out to have completed (the operation's own check says so: a
submit whose job did start), or its steps are walked back in reverse order — every step that
succeeded or may have (a step still ``running`` when the process died) — each compensation
recorded and the step marked ``compensated``, so a second recovery never compensates twice. A
compensation that fails leaves the saga ``failed_compensation`` with the reason; the next
recovery tries again.

It must never silently overwrite: ids are plain INSERTs (a duplicate is an error), states move
only along :data:`SAGA_MOVES` / :data:`STEP_MOVES` (an illegal move is an error), a newer schema
is refused before any migration writes, and a read error at start is raised, never read as
"no sagas".
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from jobkit.errors import JobkitError, StoreError
from jobkit.owner import Owner

__all__ = ["SAGA_MOVES", "STEP_MOVES", "Recovery", "Saga", "SagaError", "SagaLog", "SagaState", "Step", "StepState",
           "recover", "walk_back"]


class SagaError(JobkitError):
    """An illegal saga operation (a duplicate id, an illegal state move)."""


class SagaState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    FAILED_COMPENSATION = "failed_compensation"


class StepState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATED = "compensated"


#: The only legal moves. A saga whose step failed is ``failed`` until it is walked back; a
#: ``running`` saga found after a crash may turn out ``completed`` (its operation's check) or be
#: walked back; a failed compensation is retried.
SAGA_MOVES: Mapping[SagaState, frozenset[SagaState]] = {
    SagaState.RUNNING: frozenset({SagaState.COMPLETED, SagaState.FAILED, SagaState.COMPENSATING}),
    SagaState.FAILED: frozenset({SagaState.COMPENSATING}),
    SagaState.COMPENSATING: frozenset({SagaState.COMPENSATED, SagaState.FAILED_COMPENSATION}),
    SagaState.FAILED_COMPENSATION: frozenset({SagaState.COMPENSATING}),
    SagaState.COMPLETED: frozenset(),
    SagaState.COMPENSATED: frozenset(),
}
STEP_MOVES: Mapping[StepState, frozenset[StepState]] = {
    StepState.RUNNING: frozenset({StepState.SUCCEEDED, StepState.FAILED, StepState.COMPENSATED}),
    StepState.SUCCEEDED: frozenset({StepState.COMPENSATED}),
    StepState.FAILED: frozenset(),
    StepState.COMPENSATED: frozenset(),
}
UNRESOLVED = (SagaState.RUNNING, SagaState.FAILED, SagaState.COMPENSATING, SagaState.FAILED_COMPENSATION)

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE saga (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, input TEXT NOT NULL,
            started_at REAL NOT NULL, ended_at REAL, failure TEXT, owner TEXT
        )""",
        "CREATE INDEX saga_state ON saga (state)",
        """CREATE TABLE saga_step (
            saga_id INTEGER NOT NULL REFERENCES saga(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
            input TEXT, output TEXT, started_at REAL NOT NULL, ended_at REAL, error TEXT,
            PRIMARY KEY (saga_id, idx)
        )""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

#: A hook called at every boundary of a saga (the runner's: "saga-begun", "before:STEP", ...;
#: :func:`walk_back`'s: "compensating", "undone:STEP", "compensated:STEP"): the crash tests kill
#: the process there.
Checkpoint = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    idx: int
    name: str
    state: StepState
    input: Any
    output: Any
    started_at: float
    ended_at: float | None
    error: str | None


@dataclass(frozen=True)
class Saga:
    id: int
    name: str
    state: SagaState
    input: Any
    started_at: float
    ended_at: float | None
    failure: str | None
    steps: list[Step] = field(default_factory=list)
    owner: Owner | None = None  # the process running it; recovery leaves a live owner's saga alone

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "state": self.state.value, "input": self.input,
                "started_at": self.started_at, "ended_at": self.ended_at, "failure": self.failure,
                "owner_pid": self.owner.pid if self.owner else None,
                "steps": [{"idx": s.idx, "name": s.name, "state": s.state.value, "input": s.input,
                           "output": s.output, "started_at": s.started_at, "ended_at": s.ended_at,
                           "error": s.error} for s in self.steps]}


#: sagas this process is running right now (saga log path, id): recovery leaves them alone
_ACTIVE: set[tuple[str, int]] = set()


class SagaLog:
    """``sagas.db``: one connection of its own, every change committed at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and not path.is_file():
                raise StoreError(f"cannot use the saga log {path}: it is not a file")
            self._db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        except OSError as exc:
            raise StoreError(f"cannot use the saga log {path}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use the saga log {path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:  # refused before anything is written
                raise StoreError(f"the saga log {path} has schema version {version}, newer than this jobkit "
                                 f"({SCHEMA_VERSION}): upgrade jobkit")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            for n in range(version, SCHEMA_VERSION):
                with self._tx():
                    if int(self._db.execute("PRAGMA user_version").fetchone()[0]) != n:
                        continue
                    for stmt in MIGRATIONS[n]:
                        self._db.execute(stmt)
                    self._db.execute(f"PRAGMA user_version = {n + 1}")
            # ids continue from the largest on disk; a read error here is an error, not "empty"
            self._next = int(self._db.execute("SELECT coalesce(max(id), 0) FROM saga").fetchone()[0]) + 1
        except (sqlite3.Error, StoreError) as exc:
            self._db.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot use the saga log {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> _Tx:
        return _Tx(self._db, self._lock)

    # --- writing --------------------------------------------------------------------------
    def begin(self, name: str, input: Any, *, saga_id: int | None = None, now: float | None = None,
              owner: Owner | None = None) -> int:
        with self._tx():
            sid = saga_id if saga_id is not None else max(
                self._next, int(self._db.execute("SELECT coalesce(max(id), 0) FROM saga").fetchone()[0]) + 1)
            try:
                me = owner or Owner.current()
                self._db.execute("INSERT INTO saga (id, name, state, input, started_at, owner) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (sid, name, SagaState.RUNNING.value, json.dumps(input), now or time.time(),
                                  json.dumps(me.as_dict())))
            except sqlite3.IntegrityError as exc:
                raise SagaError(f"saga id {sid} already exists") from exc
            self._next = sid + 1
            _ACTIVE.add((str(self.path), sid))
            return sid

    def release(self, saga_id: int) -> None:
        """This process no longer runs the saga (it returned or raised): if it is unresolved, a
        recovery may now resolve it."""
        _ACTIVE.discard((str(self.path), saga_id))

    def active(self, saga: Saga) -> bool:
        """Is the saga still being run: by this process (and not released), or by another live one?"""
        if saga.owner is None:
            return False
        if saga.owner.pid == os.getpid():
            return (str(self.path), saga.id) in _ACTIVE
        return saga.owner.alive()

    def step_begin(self, saga_id: int, idx: int, name: str, input: Any = None) -> None:
        with self._tx():
            self._saga_row(saga_id)
            try:
                self._db.execute("INSERT INTO saga_step (saga_id, idx, name, state, input, started_at) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (saga_id, idx, name, StepState.RUNNING.value, json.dumps(input), time.time()))
            except sqlite3.IntegrityError as exc:
                raise SagaError(f"saga {saga_id} step {idx} already exists ({exc})") from exc

    def step_end(self, saga_id: int, idx: int, state: StepState, *, output: Any = None,
                 error: str | None = None) -> None:
        with self._tx():
            row = self._db.execute("SELECT state FROM saga_step WHERE saga_id = ? AND idx = ?",
                                   (saga_id, idx)).fetchone()
            if row is None:
                raise SagaError(f"saga {saga_id} has no step {idx}")
            _check(STEP_MOVES, StepState(row["state"]), state, f"saga {saga_id} step {idx}")
            sets = "state = ?, ended_at = ?"
            args: list[object] = [state.value, time.time()]
            if state is not StepState.COMPENSATED:
                sets += ", output = ?, error = ?"
                args += [json.dumps(output), error]
            else:
                sets += ", error = coalesce(?, error)"
                args += [error]
            self._db.execute(f"UPDATE saga_step SET {sets} WHERE saga_id = ? AND idx = ?", (*args, saga_id, idx))

    def move(self, saga_id: int, state: SagaState, failure: str | None = None) -> None:
        with self._tx():
            current = SagaState(self._saga_row(saga_id)["state"])
            _check(SAGA_MOVES, current, state, f"saga {saga_id}")
            final = state in (SagaState.COMPLETED, SagaState.COMPENSATED)
            self._db.execute("UPDATE saga SET state = ?, failure = coalesce(?, failure), ended_at = ? WHERE id = ?",
                             (state.value, failure, time.time() if final else None, saga_id))

    def _saga_row(self, saga_id: int) -> sqlite3.Row:
        row: sqlite3.Row | None = self._db.execute("SELECT * FROM saga WHERE id = ?", (saga_id,)).fetchone()
        if row is None:
            raise SagaError(f"no saga {saga_id}")
        return row

    # --- reading --------------------------------------------------------------------------
    def get(self, saga_id: int) -> Saga:
        return self._load(self._saga_row(saga_id))

    def sagas(self, *, unresolved: bool = False, limit: int | None = None, name: str | None = None) -> list[Saga]:
        sql, args = "SELECT * FROM saga WHERE 1 = 1", []
        if unresolved:
            sql += f" AND state IN ({','.join('?' * len(UNRESOLVED))})"
            args += [s.value for s in UNRESOLVED]
        if name is not None:
            sql += " AND name = ?"
            args.append(name)
        sql += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [self._load(r) for r in self._db.execute(sql, args)]

    def _load(self, r: sqlite3.Row) -> Saga:
        steps = [Step(s["idx"], s["name"], StepState(s["state"]), _json(s["input"]), _json(s["output"]),
                      s["started_at"], s["ended_at"], s["error"])
                 for s in self._db.execute("SELECT * FROM saga_step WHERE saga_id = ? ORDER BY idx", (r["id"],))]
        owner = _json(r["owner"])
        return Saga(r["id"], r["name"], SagaState(r["state"]), _json(r["input"]), r["started_at"], r["ended_at"],
                    r["failure"], steps, Owner.from_dict(owner) if isinstance(owner, dict) else None)


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _check(moves: Mapping[Any, frozenset[Any]], current: Any, new: Any, what: str) -> None:
    if new not in moves[current]:
        raise SagaError(f"{what}: illegal move {current.value} -> {new.value}")


class _Tx:
    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db, self._lock = db, lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()


# --- recovery -------------------------------------------------------------------------------------
#: (saga, step) -> undo it: called with the saga and the step; idempotent, and safe when the step
#: never took effect (a step that was running when the process died may or may not have acted).
Compensate = Callable[[Saga, Step], Awaitable[None]]
#: saga -> did this operation in fact complete? True: it did (the saga is marked completed);
#: False: it did not (it is walked back); None: cannot tell yet (left for a later recovery).
Completed = Callable[[Saga], Awaitable[bool | None]]


@dataclass
class Recovery:
    completed: list[int] = field(default_factory=list)  # turned out to have completed
    compensated: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)  # compensation failed (retried next time)
    busy: list[int] = field(default_factory=list)  # their process is alive, or too soon to tell: left alone

    @property
    def changed(self) -> int:
        return len(self.completed) + len(self.compensated) + len(self.failed)


async def walk_back(log: SagaLog, saga: Saga, compensations: Mapping[tuple[str, str], Compensate],
                    checkpoint: Checkpoint | None = None) -> str | None:
    """Compensate every step that succeeded or may have (still ``running``), newest first, each
    marked ``compensated`` as soon as it is undone; return None, or why a compensation failed
    (the saga is then ``failed_compensation``: the next recovery resumes where this one stopped).

    A saga already ``compensating`` is a walk-back its process did not finish (killed, or
    cancelled between two compensations): it resumes, and the steps already marked
    ``compensated`` are skipped. ``checkpoint`` is called at "compensating" (the saga moved),
    "undone:STEP" (the compensation acted, not yet logged) and "compensated:STEP" (logged)."""
    cp = checkpoint or (lambda _point: None)
    if saga.state is not SagaState.COMPENSATING:
        log.move(saga.id, SagaState.COMPENSATING)
    cp("compensating")
    try:
        for step in reversed(saga.steps):
            if step.state not in (StepState.SUCCEEDED, StepState.RUNNING):
                continue
            undo = compensations.get((saga.name, step.name))
            if undo is not None:
                await undo(saga, step)
            cp(f"undone:{step.name}")
            log.step_end(saga.id, step.idx, StepState.COMPENSATED)
            cp(f"compensated:{step.name}")
    except Exception as exc:
        reason = f"compensating failed: {exc}"
        log.move(saga.id, SagaState.FAILED_COMPENSATION, reason)
        return reason
    log.move(saga.id, SagaState.COMPENSATED)
    return None


async def recover(log: SagaLog, compensations: Mapping[tuple[str, str], Compensate],
                  completed: Mapping[str, Completed] | None = None,
                  sagas: Iterable[Saga] | None = None) -> Recovery:
    """Resolve every unresolved saga whose process is gone (oldest first): one whose operation's
    check says it completed is marked so; any other is walked back (:func:`walk_back`)."""
    out = Recovery()
    for saga in sorted(sagas if sagas is not None else log.sagas(unresolved=True), key=lambda s: s.id):
        if log.active(saga):
            out.busy.append(saga.id)  # its process is still at it: not a crash
            continue
        if saga.state is SagaState.RUNNING and completed and saga.name in completed:
            try:
                done = await completed[saga.name](saga)
            except Exception as exc:
                out.failed.append((saga.id, f"cannot tell whether it completed: {exc}"))
                continue
            if done is None:
                out.busy.append(saga.id)
                continue
            if done:
                log.move(saga.id, SagaState.COMPLETED)
                out.completed.append(saga.id)
                continue
        why = await walk_back(log, saga, compensations)
        if why is None:
            out.compensated.append(saga.id)
        else:
            out.failed.append((saga.id, why))
    return out
