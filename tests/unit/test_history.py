"""The history checker finds every impossible transition, and nothing in a history the store wrote."""

from __future__ import annotations

import pytest

from jobkit.history import check_history
from jobkit.store import HistoryEntry

pytestmark = pytest.mark.unit


def h(status: str, t: float, *, code: int | None = None, version: int | None = None, observed: float | None = None,
      job: str = "j") -> HistoryEntry:
    return HistoryEntry(job, status, t, "test", None, code, version, observed)


CLEAN = [h("queued", 1, version=0), h("running", 2, version=1, observed=1.5), h("completed", 3, code=0, version=2,
                                                                              observed=2.5)]


def kinds(entries: list[HistoryEntry], hosts: dict[str, list[tuple[str, str, int | None]]] | None = None) -> list[str]:
    return [v.kind for v in check_history(entries, hosts)]


def test_a_clean_history_has_no_violation() -> None:
    assert kinds(CLEAN, {"j": [("database", "completed", 0)]}) == []


@pytest.mark.parametrize(("entries", "kind"), [
    ([*CLEAN, h("running", 4, version=3)], "final_moved"),
    ([h("queued", 1), h("completed", 2, code=0), h("failed", 3, code=1)], "final_moved"),
    ([h("queued", 1), h("failed", 2, code=1), h("failed", 3, code=2)], "exit_changed"),
    ([h("queued", 1), h("running", 2), h("queued", 3)], "backwards"),
    ([h("queued", 1, version=0), h("running", 2, version=1), h("lost", 3, version=1)], "version"),
    ([h("queued", 5), h("running", 2)], "time"),
    ([h("queued", 1), h("running", 5, observed=4), h("lost", 6, observed=3)], "stale_verdict"),
])
def test_each_impossible_transition_is_reported(entries: list[HistoryEntry], kind: str) -> None:
    assert kind in kinds(entries)


def test_a_final_status_no_host_record_agrees_with_is_reported() -> None:
    assert kinds(CLEAN, {"j": [("database", "failed", 3), ("state_file", "failed", 3)]}) == ["contradicts_host"]
    # one agreeing record is enough (the other source disagrees: a conflict the store reported)
    assert kinds(CLEAN, {"j": [("database", "failed", 3), ("state_file", "completed", 0)]}) == []
    assert kinds(CLEAN, {}) == []  # nothing on the host: nothing to compare


def test_jobs_are_checked_apart() -> None:
    mixed = [h("queued", 1, job="a"), h("queued", 2, job="b"), h("completed", 3, code=0, job="a"),
             h("running", 4, job="b")]
    assert kinds(mixed) == []
