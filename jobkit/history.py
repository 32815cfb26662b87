"""The history checker: every impossible transition in a store's status history, and every final
status that contradicts what the host itself recorded.

A pure function over data (:func:`check_history`), used by ``jobkit check-history``, by the
stateful tests after every step and by the conformance R clauses. It never writes anything.

What is impossible:

- ``final_moved``: a final status (completed, failed) followed by any other status (including
  the completed ↔ failed flip);
- ``exit_changed``: a final status recorded again with another exit code;
- ``backwards``: ``running`` followed by ``queued``;
- ``version``: a change that did not advance the row's version (two writers wrote over one row);
- ``time``: an entry written before the one it follows;
- ``stale_verdict``: a verdict whose evidence was gathered before the record it overwrote was
  written (an older view written over a newer one);
- ``contradicts_host``: the store's final status and exit code agree with none of the final
  records the host holds for the job (its database row, its state file).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from jobkit.models import Evidence, JobStatus
from jobkit.store import HistoryEntry

FINAL = {s.value for s in JobStatus if s.final}
#: clocks of one machine: an entry may be written this much "before" the previous one
CLOCK_SLACK = 0.001


@dataclass(frozen=True)
class Violation:
    job_id: str
    kind: str
    detail: str

    def line(self) -> str:
        return f"{self.job_id}: {self.kind}: {self.detail}"

    def as_dict(self) -> dict[str, str]:
        return {"job": self.job_id, "kind": self.kind, "detail": self.detail}


#: Final records a host holds for a job: (source, status, exit code).
HostRecords = Mapping[str, list[tuple[str, str, int | None]]]


def host_records(evidence: Mapping[str, Evidence], tokens: Mapping[str, str | None]) -> dict[str, list[
        tuple[str, str, int | None]]]:
    """The final records in a probe's evidence, skipping rows made by another submission."""
    out: dict[str, list[tuple[str, str, int | None]]] = {}
    for job_id, ev in evidence.items():
        recs: list[tuple[str, str, int | None]] = []
        token = tokens.get(job_id)
        if ev.db is not None and ev.db.state == "ok" and ev.db.status in FINAL:
            if ev.db.token and token and ev.db.token != token:
                continue  # another submission's record: not this job's
            recs.append(("database", ev.db.status, ev.db.exit_code))
        if ev.file is not None and ev.file.state == "ok" and ev.file.status in FINAL:
            recs.append(("state_file", str(ev.file.status), ev.file.exit_code))
        if recs:
            out[job_id] = recs
    return out


def check_history(entries: Iterable[HistoryEntry], hosts: HostRecords | None = None) -> list[Violation]:
    """Every impossible transition in ``entries`` (in the order they were written), and, given
    the hosts' final records, every final status they all contradict."""
    by_job: dict[str, list[HistoryEntry]] = {}
    for e in entries:
        by_job.setdefault(e.job_id, []).append(e)
    out: list[Violation] = []
    for job_id, hist in by_job.items():
        final: HistoryEntry | None = None
        prev: HistoryEntry | None = None
        for cur in hist:
            if final is not None and cur.status != final.status:
                out.append(Violation(job_id, "final_moved", f"{final.status} (exit {final.exit_code}) became "
                                                            f"{cur.status} (exit {cur.exit_code}) [{cur.source}]"))
            elif final is not None and cur.exit_code != final.exit_code:
                out.append(Violation(job_id, "exit_changed", f"{final.status} with exit {final.exit_code}, then "
                                                             f"exit {cur.exit_code} [{cur.source}]"))
            if prev is not None:
                out.extend(_step(job_id, prev, cur))
            if final is None and cur.status in FINAL:
                final = cur
            prev = cur
        if final is not None and hosts is not None and hosts.get(job_id):
            recs = hosts[job_id]
            if all((status, code) != (final.status, final.exit_code) for _, status, code in recs):
                said = ", ".join(f"{src} says {status} (exit {code})" for src, status, code in recs)
                out.append(Violation(job_id, "contradicts_host",
                                     f"recorded {final.status} (exit {final.exit_code}), but {said}"))
    return out


def _step(job_id: str, prev: HistoryEntry, cur: HistoryEntry) -> list[Violation]:
    out = []
    if prev.status == JobStatus.RUNNING.value and cur.status == JobStatus.QUEUED.value:
        out.append(Violation(job_id, "backwards", f"running became queued [{cur.source}]"))
    if prev.version is not None and cur.version is not None and cur.version <= prev.version:
        out.append(Violation(job_id, "version", f"version {cur.version} after {prev.version}: a write over a row "
                                                "it was not computed from"))
    if cur.timestamp + CLOCK_SLACK < prev.timestamp:
        out.append(Violation(job_id, "time", f"written at {cur.timestamp:.3f}, before the entry it follows "
                                             f"({prev.timestamp:.3f})"))
    if cur.observed_at is not None and cur.observed_at + CLOCK_SLACK < prev.timestamp:
        out.append(Violation(job_id, "stale_verdict", f"{cur.status} from evidence gathered at {cur.observed_at:.3f} "
                                                      f"overwrote {prev.status}, written later at "
                                                      f"{prev.timestamp:.3f}"))
    return out
