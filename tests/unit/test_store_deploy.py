"""The local store's schema rules and deploy's prerequisite check, on real SQLite and a real sh."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from jobkit.deploy import PREREQUISITES, check_prerequisites
from jobkit.errors import PrerequisiteMissing, StoreError
from jobkit.hosts import HostSpec
from jobkit.store import SCHEMA_VERSION, Store
from jobkit.transport_local import LocalTransport

pytestmark = pytest.mark.unit


def test_a_store_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this jobkit"):
        Store(path)


def test_the_store_is_wal_with_foreign_keys_and_history(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.add_host(HostSpec("h", "127.0.0.1", 22, "u", Path("/k"), "ssh-ed25519 AAAA"))
    store.add_job("j1", "h", ["true"], now=100.0)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute("INSERT INTO job_status_history (job_id, status, timestamp, source) "
                          "VALUES ('nope', 'queued', 1, 'x')")
    assert store.history("j1") == [("queued", 100.0, "client", "submitted")]
    store.close()


async def test_deploy_names_every_missing_prerequisite(tmp_path: Path) -> None:
    shim = tmp_path / "bin"
    shim.mkdir()
    for tool in ("sh", "setsid", "sync", "mv", "date", "awk", "sed", "mkdir", "sleep"):
        import shutil

        real = shutil.which(tool)
        assert real is not None
        (shim / tool).symlink_to(real)
    t = LocalTransport(env={"PATH": str(shim)})
    with pytest.raises(PrerequisiteMissing) as err:
        await check_prerequisites(t)
    assert "tmux" in str(err.value)
    assert "sqlite3" in str(err.value)
    assert set(PREREQUISITES) >= {"tmux", "sqlite3"}
