"""The reconciliation chain as one pure function: evidence → verdict. No I/O, no clock.

Order of trust, as in the original chain: server database, then state file, then liveness,
then "State lost - unable to determine job status". Its holes are fixed:

1. An unreachable host is *unavailable*: the last known status is kept, marked stale, never
   turned into ``failed``.
2. A final state (completed/failed) in any source beats ``running`` in another; two different
   final states are a reported conflict (the more trusted source still decides).
3. Status never moves backwards from what the store already knew (a final job stays final).
4. ``running`` with the process gone (pid absent, or a different process behind the same pid),
   the wrapper gone, and no exit code anywhere becomes ``failed``, "Job terminated unexpectedly
   (possible SIGKILL)", once ``grace`` seconds have passed since it was last seen alive.
5. A boot id different from the one recorded at start means the host rebooted: the job cannot
   be running any more.
6. A row still ``queued`` with no tmux session and no state file once the grace period after
   submission has passed is ``failed``, "Job never started" (killed before its traps).
"""

from __future__ import annotations

from jobkit.models import Evidence, JobStatus, Known, Source, Verdict

LOST_REASON = "State lost - unable to determine job status"
SIGKILL_REASON = "Job terminated unexpectedly (possible SIGKILL)"
NEVER_STARTED_REASON = "Job never started"


def _status(value: str | None) -> JobStatus | None:
    try:
        return JobStatus(value) if value else None
    except ValueError:
        return None


def merge(ev: Evidence, known: Known, *, grace: float = 30.0) -> Verdict:
    said: dict[str, str] = {}
    db, sf, live, host = ev.db, ev.file, ev.live, ev.host

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
            conflict = True
            reason += f"; was recorded {known.status.value} (exit {known.exit_code}) before"
        return Verdict(ev.job_id, status, source, reason, conflict=conflict, exit_code=code, signal=sig,
                       said=said)

    # 3. never backwards from a final status already known
    if known.status.final:
        return Verdict(ev.job_id, known.status, Source.NONE,
                       f"{known.status.value} already recorded; no source has a final state now "
                       "(kept: status never moves backwards)", exit_code=known.exit_code, said=said)

    started_boot = (sf.boot_id if sf is not None and sf.state == "ok" else None) or (db.boot_id if db else None)
    says_running = [s for s, st in ((Source.DATABASE, db_status), (Source.STATE_FILE, file_status))
                    if st is JobStatus.RUNNING]

    # 5. reboot: nothing started before it can still run
    if started_boot and host.boot_id and started_boot != host.boot_id:
        said["boot"] = "changed"
        return Verdict(ev.job_id, JobStatus.FAILED, Source.LIVENESS,
                       "Host rebooted while the job was running (boot id changed); " + SIGKILL_REASON,
                       said=said)

    if live.job_alive:
        source = says_running[0] if says_running else Source.LIVENESS
        return Verdict(ev.job_id, JobStatus.RUNNING, source, "running; process alive", said=said, alive=True)

    if says_running or known.status is JobStatus.RUNNING:
        now = host.now_epoch
        last = known.last_alive_epoch
        if live.wrapper_alive:
            return Verdict(ev.job_id, JobStatus.RUNNING, says_running[0] if says_running else Source.LIVENESS,
                           "job process gone, wrapper still finishing", said=said)
        if last is not None and now is not None and now - last < grace:
            return Verdict(ev.job_id, JobStatus.RUNNING, says_running[0] if says_running else Source.NONE,
                           f"process gone for {now - last:.0f}s, within the {grace:.0f}s grace period",
                           said=said)
        return Verdict(ev.job_id, JobStatus.FAILED, Source.LIVENESS, SIGKILL_REASON, said=said)

    if live.tmux_session:  # started, not yet written its first state
        return Verdict(ev.job_id, JobStatus.RUNNING, Source.LIVENESS, "tmux session present, no state yet",
                       said=said)

    if db_status is JobStatus.QUEUED:
        now, sub = host.now_epoch, known.submitted_epoch
        if now is not None and sub is not None and now - sub > grace and live.tmux_session is False:
            # FAILURE-MODES 8: killed before it could record anything
            return Verdict(ev.job_id, JobStatus.FAILED, Source.DATABASE,
                           f"{NEVER_STARTED_REASON} (queued for {now - sub:.0f}s, no session, no state)", said=said)
        return Verdict(ev.job_id, JobStatus.QUEUED, Source.DATABASE, "queued", said=said)

    if known.status is JobStatus.QUEUED and known.submitted_epoch is not None and host.now_epoch is not None \
            and host.now_epoch - known.submitted_epoch <= grace:
        return Verdict(ev.job_id, JobStatus.QUEUED, Source.NONE, "queued; nothing on the host yet", said=said)
    return Verdict(ev.job_id, JobStatus.LOST, Source.NONE, LOST_REASON, said=said)
