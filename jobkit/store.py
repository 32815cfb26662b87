"""The local job store: SQLite on the runner's machine.

Tables ``jobs`` and ``job_status_history`` (status, timestamp, source, reason), ``hosts`` and
``meta``; versioned migrations (``PRAGMA user_version``), a database newer than this code is
refused; WAL, busy timeout, foreign keys; every multi-row change in one transaction. The
synchronous :class:`Store` is wrapped by :class:`AsyncStore`, which runs every call in a worker
thread so blocking SQLite calls never run on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jobkit.errors import ConfigError, StoreError
from jobkit.hosts import HostSpec
from jobkit.models import FINAL_STATUSES, JobStatus, Known, Verdict
from jobkit.sagas import SagaLog

T = TypeVar("T")

MIGRATIONS: list[list[str]] = [
    # 1: jobs, history, hosts, meta
    [
        """CREATE TABLE hosts (
            name TEXT PRIMARY KEY, address TEXT NOT NULL, port INTEGER NOT NULL, user TEXT NOT NULL,
            private_key TEXT NOT NULL, known_host_key TEXT, base_dir TEXT
        )""",
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY, name TEXT, host TEXT NOT NULL REFERENCES hosts(name),
            scheduler_job_id TEXT, command TEXT NOT NULL, status TEXT NOT NULL,
            status_source TEXT, reason TEXT, stale INTEGER NOT NULL DEFAULT 0, conflict INTEGER NOT NULL DEFAULT 0,
            exit_code INTEGER, signal TEXT, error TEXT,
            created_at REAL NOT NULL, submitted_at REAL, started_at REAL, completed_at REAL,
            pid INTEGER, proc_start INTEGER, boot_id TEXT, last_alive_at REAL,
            work_dir TEXT, updated_at REAL NOT NULL
        )""",
        "CREATE INDEX jobs_host_status ON jobs (host, status)",
        """CREATE TABLE job_status_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            status TEXT NOT NULL, timestamp REAL NOT NULL, source TEXT NOT NULL, reason TEXT
        )""",
        "CREATE INDEX history_job ON job_status_history (job_id, timestamp)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
    # 2: optimistic concurrency (every change advances `version`; a verdict is written only over
    # the row it was computed from), the submission's token, when the job outlived its wrapper;
    # and the two rules no writer may break, enforced by the database itself
    [
        "ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN token TEXT",
        "ALTER TABLE jobs ADD COLUMN wrapper_gone_at REAL",
        """CREATE TRIGGER jobs_final_never_changes BEFORE UPDATE ON jobs
           WHEN OLD.status IN ('completed', 'failed')
                AND (NEW.status IS NOT OLD.status OR NEW.exit_code IS NOT OLD.exit_code)
           BEGIN SELECT RAISE(ABORT, 'jobkit: a final status never changes'); END""",
        """CREATE TRIGGER jobs_version_advances BEFORE UPDATE ON jobs WHEN NEW.version <= OLD.version
           BEGIN SELECT RAISE(ABORT, 'jobkit: every change of a job row advances its version'); END""",
    ],
    # 3: each history entry says what it recorded and from what: the exit code, the row version it
    # produced, and when the evidence behind it was gathered (`jobkit check-history` reads them)
    [
        "ALTER TABLE job_status_history ADD COLUMN exit_code INTEGER",
        "ALTER TABLE job_status_history ADD COLUMN version INTEGER",
        "ALTER TABLE job_status_history ADD COLUMN observed_at REAL",
        """CREATE TRIGGER jobs_never_requeued BEFORE UPDATE ON jobs
           WHEN OLD.status = 'running' AND NEW.status = 'queued'
           BEGIN SELECT RAISE(ABORT, 'jobkit: a running job never goes back to queued'); END""",
    ],
    # 4: a host says which backend runs its jobs (tmux, or a batch scheduler) and its partition
    [
        "ALTER TABLE hosts ADD COLUMN scheduler TEXT NOT NULL DEFAULT 'tmux'",
        "ALTER TABLE hosts ADD COLUMN partition TEXT",
    ],
    # 5: a batch scheduler's statuses: its final ones never change either (pending is not final)
    [
        "DROP TRIGGER jobs_final_never_changes",
        f"""CREATE TRIGGER jobs_final_never_changes BEFORE UPDATE ON jobs
           WHEN OLD.status IN ({", ".join(repr(s) for s in FINAL_STATUSES)})
                AND (NEW.status IS NOT OLD.status OR NEW.exit_code IS NOT OLD.exit_code)
           BEGIN SELECT RAISE(ABORT, 'jobkit: a final status never changes'); END""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
_FINAL_SQL = ", ".join(repr(s) for s in FINAL_STATUSES)
ACTIVE = ("queued", "running", "lost", "pending")


@dataclass(frozen=True)
class JobRecord:
    id: str
    host: str
    command: list[str]
    status: JobStatus
    status_source: str | None
    reason: str | None
    stale: bool
    conflict: bool
    exit_code: int | None
    signal: str | None
    created_at: float
    submitted_at: float | None
    completed_at: float | None
    pid: int | None
    proc_start: int | None
    boot_id: str | None
    last_alive_at: float | None
    version: int = 0
    token: str | None = None
    started_at: float | None = None
    wrapper_gone_at: float | None = None
    name: str | None = None
    work_dir: str | None = None
    scheduler_job_id: str | None = None

    def known(self) -> Known:
        return Known(self.status, self.exit_code, self.submitted_at, self.last_alive_at, self.boot_id, self.token,
                     self.started_at, self.wrapper_gone_at)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._sagas: SagaLog | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and not path.is_file():
                raise StoreError(f"cannot use the store {path}: it is not a file")
            self._db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        except OSError as exc:
            raise StoreError(f"cannot use the store {path}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use the store {path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except (sqlite3.Error, StoreError) as exc:
            self._db.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot use the store {path}: {exc}") from exc

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(f"the store {self.path} has schema version {version}, newer than this jobkit "
                             f"({SCHEMA_VERSION}): upgrade jobkit instead of downgrading the store")
        for n in range(version, SCHEMA_VERSION):
            with self._tx():
                if int(self._db.execute("PRAGMA user_version").fetchone()[0]) != n:
                    continue  # another process migrated it meanwhile
                for stmt in MIGRATIONS[n]:
                    self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version = {n + 1}")

    def _tx(self) -> _Tx:
        return _Tx(self._db, self._lock)

    def close(self) -> None:
        if self._sagas is not None:
            self._sagas.close()
        self._db.close()

    @property
    def sagas(self) -> SagaLog:
        """The saga log beside the store (``sagas.db``: a file and a connection of its own)."""
        if self._sagas is None:
            self._sagas = SagaLog(self.path.parent / "sagas.db")
        return self._sagas

    # --- hosts ------------------------------------------------------------------------------
    def add_host(self, spec: HostSpec) -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO hosts (name, address, port, user, private_key, known_host_key, base_dir, scheduler, "
                "partition) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "address=excluded.address, port=excluded.port, user=excluded.user, private_key=excluded.private_key, "
                "known_host_key=excluded.known_host_key, base_dir=excluded.base_dir, scheduler=excluded.scheduler, "
                "partition=excluded.partition",
                (spec.name, spec.address, spec.port, spec.user, str(spec.private_key), spec.known_host_key,
                 spec.base_dir, spec.scheduler, spec.partition))

    def host(self, name: str) -> HostSpec:
        row = self._db.execute("SELECT * FROM hosts WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise ConfigError(f"unknown host {name!r} (add it with: jobkit hosts add)")
        return HostSpec(row["name"], row["address"], row["port"], row["user"], Path(row["private_key"]),
                        row["known_host_key"], row["base_dir"], scheduler=row["scheduler"], partition=row["partition"])

    def hosts(self) -> list[HostSpec]:
        return [self.host(r[0]) for r in self._db.execute("SELECT name FROM hosts ORDER BY name")]

    # --- jobs -------------------------------------------------------------------------------
    def add_job(self, job_id: str, host: str, command: list[str], now: float | None = None,
                token: str | None = None, name: str | None = None, work_dir: str | None = None) -> None:
        now = now or time.time()
        self.host(host)
        with self._tx():
            if self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone():
                raise ConfigError(f"job id {job_id!r} already exists in the store")
            self._db.execute(
                "INSERT INTO jobs (id, host, command, status, status_source, reason, created_at, submitted_at, "
                "updated_at, token, name, work_dir) "
                "VALUES (?, ?, ?, 'queued', 'client', 'submitted', ?, ?, ?, ?, ?, ?)",
                (job_id, host, json.dumps(command), now, now, now, token, name, work_dir))
            self._history(job_id, "queued", now, "client", "submitted", None, 0, now)

    def set_scheduler_id(self, job_id: str, scheduler_id: str) -> None:
        """The batch scheduler's id of the job (a fact of its submission, not a status)."""
        with self._tx():
            self._db.execute("UPDATE jobs SET scheduler_job_id = ?, version = version + 1 "
                             "WHERE id = ? AND scheduler_job_id IS NULL", (scheduler_id, job_id))

    def forget_unlaunched(self, job_id: str, token: str | None) -> bool:
        """Remove a job whose launch was refused before anything started (its id was used on
        the host): as if it had never been submitted. Only a row still ``queued`` by this very
        submission goes."""
        with self._tx():
            cur = self._db.execute("DELETE FROM jobs WHERE id = ? AND token IS ? AND status = 'queued'",
                                   (job_id, token))
            return cur.rowcount == 1

    def job(self, job_id: str) -> JobRecord:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise ConfigError(f"unknown job {job_id!r}")
        return _record(row)

    def jobs(self, host: str | None = None, active_only: bool = False) -> list[JobRecord]:
        sql, args = "SELECT * FROM jobs WHERE 1 = 1", []
        if host is not None:
            sql += " AND host = ?"
            args.append(host)
        if active_only:
            sql += f" AND status IN ({','.join('?' * len(ACTIVE))})"
            args.extend(ACTIVE)
        return [_record(r) for r in self._db.execute(sql + " ORDER BY created_at, id", args)]

    def job_ids_by_host(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for r in self._db.execute("SELECT id, host FROM jobs"):
            out.setdefault(r["host"], set()).add(r["id"])
        return out

    def mark_failed_launch(self, job_id: str, error: str) -> bool:
        """Record a launch that provably started nothing; only over a row still ``queued``."""
        now = time.time()
        with self._tx():
            cur = self._db.execute(
                "UPDATE jobs SET status='failed', status_source='client', reason=?, error=?, completed_at=?, "
                "updated_at=?, version=version+1 WHERE id=? AND status='queued'",
                (f"launch failed: {error}", error, now, now, job_id))
            if cur.rowcount != 1:
                return False
            version = self._db.execute("SELECT version FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            self._history(job_id, "failed", now, "client", f"launch failed: {error}", None, version, now)
            return True

    def apply(self, updates: Iterable[Update], now: float | None = None) -> Applied:
        """Write one reconciliation's verdicts in one transaction, each only over the row it was
        computed from: a row changed by another writer since (``version`` moved) is left as that
        writer made it and reported in ``superseded`` — a later reconciliation looks again. A
        final status is never replaced (the database refuses it too). ``last_alive_at`` and
        ``wrapper_gone_at`` are in the host's clock (``host_now``), the clock the grace period is
        measured in."""
        now = now or time.time()
        result = Applied()
        with self._tx():
            for u in updates:
                v, facts = u.verdict, u.facts
                row = self._db.execute("SELECT status, version, updated_at FROM jobs WHERE id = ?",
                                       (v.job_id,)).fetchone()
                if row is None:
                    continue
                # another writer changed the row since it was read, or after the evidence was
                # gathered (a tick writes as of its start): its newer view is kept
                if row["version"] != u.version or (u.observed_at is not None and row["updated_at"] > u.observed_at):
                    result.superseded.append(v.job_id)
                    continue
                if JobStatus(row["status"]).final and row["status"] != v.status.value:
                    raise StoreError(f"{v.job_id}: refusing to replace final {row['status']} by {v.status.value}")
                if row["status"] == "running" and v.status is JobStatus.QUEUED:
                    raise StoreError(f"{v.job_id}: refusing to move running back to queued")
                host_now = facts.get("host_now") or now
                self._db.execute(
                    "UPDATE jobs SET status=?, status_source=?, reason=?, stale=?, conflict=?, "
                    f"exit_code=CASE WHEN status IN ({_FINAL_SQL}) THEN exit_code "
                    "ELSE coalesce(?, exit_code) END, signal=coalesce(?, signal), "
                    f"completed_at=CASE WHEN ? IN ({_FINAL_SQL}) THEN coalesce(completed_at, ?) "
                    "ELSE completed_at END, pid=coalesce(?, pid), proc_start=coalesce(?, proc_start), "
                    "boot_id=coalesce(?, boot_id), last_alive_at=CASE WHEN ? THEN ? ELSE last_alive_at END, "
                    "wrapper_gone_at=CASE WHEN ? THEN coalesce(wrapper_gone_at, ?) ELSE wrapper_gone_at END, "
                    "started_at=coalesce(started_at, ?), updated_at=?, version=version+1 WHERE id=? AND version=?",
                    (v.status.value, v.source.value, v.reason, int(v.stale), int(v.conflict), v.exit_code, v.signal,
                     v.status.value, facts.get("completed_epoch") or now, facts.get("pid"), facts.get("proc_start"),
                     facts.get("boot_id"), int(v.alive), host_now, int(v.wrapper_gone), host_now,
                     facts.get("started_epoch"), now, v.job_id, u.version))
                if row["status"] != v.status.value:
                    result.changed += 1
                    self._history(v.job_id, v.status.value, now, v.source.value, v.reason, v.exit_code,
                                  u.version + 1, u.observed_at)
        return result

    def history(self, job_id: str) -> list[tuple[str, float, str, str | None]]:
        return [(e.status, e.timestamp, e.source, e.reason) for e in self.history_entries(job_id)]

    def history_entries(self, job_id: str | None = None) -> list[HistoryEntry]:
        """The status history of one job, or of every job (in the order it was written)."""
        sql, args = "SELECT * FROM job_status_history", [job_id]
        if job_id is None:
            args = []
        else:
            sql += " WHERE job_id = ?"
        return [HistoryEntry(r["job_id"], r["status"], r["timestamp"], r["source"], r["reason"], r["exit_code"],
                             r["version"], r["observed_at"]) for r in self._db.execute(sql + " ORDER BY id", args)]

    def _history(self, job_id: str, status: str, ts: float, source: str, reason: str | None,
                 exit_code: int | None, version: int | None, observed_at: float | None) -> None:
        self._db.execute("INSERT INTO job_status_history (job_id, status, timestamp, source, reason, exit_code, "
                         "version, observed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (job_id, status, ts, source, reason, exit_code, version, observed_at))

    # --- sessions: "while you were away" ----------------------------------------------------
    def last_seen(self) -> float | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'last_seen'").fetchone()
        return float(row[0]) if row else None

    def touch_last_seen(self, now: float | None = None) -> None:
        with self._tx():
            self._db.execute("INSERT INTO meta VALUES ('last_seen', ?) ON CONFLICT(key) DO UPDATE SET "
                             "value = excluded.value", (str(now or time.time()),))

    def away_summary(self, since: float) -> dict[str, list[str]]:
        """Jobs whose latest change since ``since`` made them final (completed, failed, and a
        batch scheduler's ends: cancelled, timeout, ...) or lost."""
        out: dict[str, list[str]] = {"completed": [], "failed": [], "lost": [],
                                     **{s: [] for s in FINAL_STATUSES if s not in ("completed", "failed")}}
        for r in self._db.execute(
            "SELECT job_id, status FROM job_status_history h WHERE timestamp >= ? AND id = "
            "(SELECT max(id) FROM job_status_history WHERE job_id = h.job_id) ORDER BY id", (since,)):
            if r["status"] in out:
                out[r["status"]].append(r["job_id"])
        return out


@dataclass(frozen=True)
class Update:
    """A verdict to write, the process facts behind it, and the ``version`` of the row it was
    computed from (read before the evidence was gathered)."""

    verdict: Verdict
    version: int
    facts: dict[str, Any] = field(default_factory=dict)
    observed_at: float | None = None  # when the evidence was gathered (client clock)


@dataclass(frozen=True)
class HistoryEntry:
    job_id: str
    status: str
    timestamp: float  # when it was written (client clock)
    source: str
    reason: str | None
    exit_code: int | None
    version: int | None  # the row version this change produced
    observed_at: float | None  # when the evidence behind it was gathered

@dataclass
class Applied:
    changed: int = 0  # jobs whose status changed
    superseded: list[str] = field(default_factory=list)  # rows another writer changed meanwhile


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


def _record(r: sqlite3.Row) -> JobRecord:
    return JobRecord(r["id"], r["host"], json.loads(r["command"]), JobStatus(r["status"]), r["status_source"],
                     r["reason"], bool(r["stale"]), bool(r["conflict"]), r["exit_code"], r["signal"],
                     r["created_at"], r["submitted_at"], r["completed_at"], r["pid"], r["proc_start"], r["boot_id"],
                     r["last_alive_at"], r["version"], r["token"], r["started_at"], r["wrapper_gone_at"], r["name"],
                     r["work_dir"], r["scheduler_job_id"])


class AsyncStore:
    """The store for asyncio code: each call runs in a worker thread."""

    def __init__(self, store: Store) -> None:
        self.sync = store

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)
