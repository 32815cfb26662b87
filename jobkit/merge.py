"""The reconciliation chain as one pure function: evidence → verdict. No I/O, no clock.

Order of trust, as in the original chain: server database, then state file, then liveness,
then "State lost - unable to determine job status". Its holes are fixed:

1. An unreachable host is *unavailable*: the last known status is kept, marked stale, never
   turned into anything else.
2. A final state (completed/failed) in any source beats ``running`` in another; two different
   final states are a reported conflict (the more trusted source decides).
3. A final status already recorded never changes (neither its status nor its exit code): a
   source that now says otherwise is reported as a conflict, never written over it.
4. An outcome nobody can know is ``lost``, never guessed: ``running`` with the job's process
   gone (pid absent, or another process behind the same pid), its wrapper gone, and no exit
   code anywhere is ``lost`` once ``grace`` seconds have passed since the job was last known to
   be alive (seen alive, or started) — "Job terminated unexpectedly (possible SIGKILL)", exit
   status unknown; a job seen alive after its wrapper was gone says so ("wrapper killed …; the
   job ran until about …"). ``lost`` is re-examined every time and becomes final as soon as a
   record of the end appears.
5. A boot id different from the one recorded at start means the host rebooted: the job cannot
   be running any more; its exit status is unknown (``lost``).
6. A job still ``queued`` with nothing of it on the host (no row or a queued row, no claim, no
   state file, no session) stays ``queued`` until the reconciler *fences* it (claims its id on
   the host so it can never start, after the grace period): only then is it ``failed``, "Job
   never started" — a fact, not a guess. A host record made by another submission (another
   token on the row) is never taken for this job: its launch was refused, it never started.
"""

from __future__ import annotations

import time

from jobkit.models import Evidence, JobStatus, Known, Source, Verdict

LOST_REASON = "State lost - unable to determine job status"
SIGKILL_REASON = "Job terminated unexpectedly (possible SIGKILL)"
NEVER_STARTED_REASON = "Job never started"
UNKNOWN_EXIT = "exit status unknown"


def _status(value: str | None) -> JobStatus | None:
    try:
        return JobStatus(value) if value else None
    except ValueError:
        return None


def _at(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch is not None else "?"


def merge(ev: Evidence, known: Known, *, grace: float = 30.0) -> Verdict:
    said: dict[str, str] = {}
    db, sf, live, host, claim = ev.db, ev.file, ev.live, ev.host, ev.claim

    if not host.reachable:
        said["host"] = "unavailable"
        return Verdict(ev.job_id, known.status, Source.NONE,
                       f"Host unavailable ({host.error or 'no answer'}): state unavailable, last known status kept",
                       stale=True, exit_code=known.exit_code, said=said)

    db_status = _status(db.status) if db is not None and db.state == "ok" else None
    file_status = _status(sf.status) if sf is not None and sf.state == "ok" else None
    said["database"] = db_status.value if db_status else (db.state if db is not None else "not asked")
    said["state_file"] = file_status.value if file_status else (sf.state if sf is not None else "not asked")
    said["liveness"] = {True: "alive", False: "gone", None: "unknown"}[live.job_alive]

    if db is not None and db.state == "ok" and db.token and known.token and db.token != known.token:
        # the row (and so the wrapper behind it) belongs to another submission of this id
        said["database"] = "another submission's row"
        if known.status.final:
            return _kept(ev, known, said, "the host's record of this id belongs to another submission")
        return Verdict(ev.job_id, JobStatus.FAILED, Source.DATABASE,
                       f"{NEVER_STARTED_REASON}: the id is used on the host by another submission "
                       "(its row has another token); that job's record is not this one's", said=said)

    # 2. final states first, in order of trust; disagreement is reported
    finals: list[tuple[Source, JobStatus, int | None, str | None]] = []
    if db is not None and db_status is not None and db_status.final:
        finals.append((Source.DATABASE, db_status, db.exit_code, db.signal))
    if sf is not None and file_status is not None and file_status.final:
        finals.append((Source.STATE_FILE, file_status, sf.exit_code, sf.signal))
    if finals:
        source, status, code, sig = finals[0]
        conflict = any((s, c) != (status, code) for _, s, c, _ in finals[1:])
        reason = f"{status.value} (exit {code}) per {source.value}"
        if conflict:
            other = finals[1]
            reason += f"; CONFLICT: {other[0].value} says {other[1].value} (exit {other[2]})"
        if known.status.final and (known.status, known.exit_code) != (status, code):
            # 3. a recorded final status never changes: report, keep
            return Verdict(ev.job_id, known.status, Source.NONE,
                           f"{known.status.value} (exit {known.exit_code}) already recorded and kept; CONFLICT: "
                           f"{source.value} now says {status.value} (exit {code})",
                           conflict=True, exit_code=known.exit_code, said=said)
        return Verdict(ev.job_id, status, source, reason, conflict=conflict, exit_code=code, signal=sig,
                       said=said)

    # 3. never backwards from a final status already known
    if known.status.final:
        return _kept(ev, known, said, "no source has a final state now")

    started_boot = (sf.boot_id if sf is not None and sf.state == "ok" else None) or (db.boot_id if db else None)
    says_running = [s for s, st in ((Source.DATABASE, db_status), (Source.STATE_FILE, file_status))
                    if st is JobStatus.RUNNING]
    first = says_running[0] if says_running else Source.LIVENESS

    # 5. reboot: nothing started before it can still run, and nothing recorded how it ended
    if started_boot and host.boot_id and started_boot != host.boot_id:
        said["boot"] = "changed"
        return Verdict(ev.job_id, JobStatus.LOST, Source.LIVENESS,
                       "Host rebooted while the job was running (boot id changed): the job is gone; "
                       + UNKNOWN_EXIT, said=said)

    if live.job_alive:
        if live.wrapper_alive is False:
            return Verdict(ev.job_id, JobStatus.RUNNING, first,
                           "running; process alive, but its wrapper is gone: its exit status will not be recorded",
                           said=said, alive=True, wrapper_gone=True)
        return Verdict(ev.job_id, JobStatus.RUNNING, first, "running; process alive", said=said, alive=True)

    if says_running and live.job_alive is None and not live.wrapper_alive:
        # no pid to check (a wrapper that records none): the source's word stands
        return Verdict(ev.job_id, JobStatus.RUNNING, says_running[0], "running per the record; liveness unknown",
                       said=said)

    if (says_running or known.status is JobStatus.RUNNING) and (live.job_alive is False or live.wrapper_alive):
        if live.wrapper_alive:
            return Verdict(ev.job_id, JobStatus.RUNNING, first, "job process gone, wrapper still finishing",
                           said=said)
        # 4. gone with no record of its end: wait out the grace (a late record), then unknown
        started = [e for e in (sf.started_epoch if sf is not None else None,
                               db.started_epoch if db is not None else None, known.started_epoch) if e is not None]
        ref = known.last_alive_epoch if known.last_alive_epoch is not None else (max(started) if started else None)
        now = host.now_epoch
        if ref is not None and now is not None and now - ref < grace:
            return Verdict(ev.job_id, JobStatus.RUNNING, says_running[0] if says_running else Source.NONE,
                           f"process gone for {now - ref:.0f}s, within the {grace:.0f}s grace period", said=said)
        if known.wrapper_gone_epoch is not None:
            reason = (f"wrapper killed (gone by {_at(known.wrapper_gone_epoch)}); the job ran until about "
                      f"{_at(known.last_alive_epoch)}; {UNKNOWN_EXIT}")
        else:
            reason = f"{SIGKILL_REASON}: wrapper and job gone, no exit status recorded; {UNKNOWN_EXIT}"
        return Verdict(ev.job_id, JobStatus.LOST, Source.LIVENESS, reason, said=said)

    if live.tmux_session:  # started, not yet written its first state
        return Verdict(ev.job_id, JobStatus.RUNNING, Source.LIVENESS, "tmux session present, no state yet",
                       said=said)

    if claim is not None and claim.state != "absent":
        said["claim"] = claim.state
    if claim is not None and claim.state == "wrapper":
        if claim.alive:
            return Verdict(ev.job_id, JobStatus.RUNNING, Source.LIVENESS,
                           "wrapper starting (id claimed, no state yet)", said=said)
        return Verdict(ev.job_id, JobStatus.LOST, Source.NONE,
                       f"a wrapper claimed the id and is gone without writing any state: {LOST_REASON}; "
                       + UNKNOWN_EXIT, said=said)

    if claim is not None and claim.state == "other":
        return Verdict(ev.job_id, JobStatus.LOST, Source.NONE,
                       "the id is claimed on the host but its claim is empty or not jobkit's (a wrapper that "
                       f"could not write?): {LOST_REASON}", said=said)
    if claim is not None and claim.state == "fenced" and db_status in (None, JobStatus.QUEUED):
        return Verdict(ev.job_id, JobStatus.FAILED, Source.NONE,
                       f"{NEVER_STARTED_REASON} (nothing on the host after the grace period; its id is fenced there, "
                       "so it can never start)", said=said)

    if known.status is JobStatus.QUEUED and db_status in (None, JobStatus.QUEUED) and \
            (sf is None or sf.state == "missing"):
        return Verdict(ev.job_id, JobStatus.QUEUED, Source.DATABASE if db_status else Source.NONE,
                       "queued; nothing started on the host yet", said=said)
    return Verdict(ev.job_id, JobStatus.LOST, Source.NONE, LOST_REASON, said=said)


def _kept(ev: Evidence, known: Known, said: dict[str, str], why: str) -> Verdict:
    return Verdict(ev.job_id, known.status, Source.NONE,
                   f"{known.status.value} already recorded; {why} (kept: a final status never changes)",
                   exit_code=known.exit_code, said=said)
