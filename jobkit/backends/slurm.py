"""The SLURM backend: each job is a batch job whose script runs jobkit's wrapper.

- **Submit**: ``sbatch --parsable`` with the batch script on stdin, the job named after the
  jobkit id (the link to the job that survives a lost scheduler id), resources from the request
  (``time``, ``cpus``, ``mem``, ``partition``). The script ``exec``\\ s the wrapper with
  ``JOBKIT_DB=none`` (SQLite on the cluster's shared filesystem is unsafe: the state file on the
  shared home is the wrapper's record, SLURM's accounting the second one) and
  ``JOBKIT_OUTPUT=files`` (the same ``jobkit logs`` as on a tmux host). A requeued job's script
  moves the previous run's files aside, so that the new run can claim the id again.
- **Evidence** for any number of jobs in ONE round trip: ``squeue -t all`` of the user,
  ``sacct -P -X`` for the jobs' names (``sacct -c``, the job completion log, where accounting
  storage is disabled) and the wrapper's state files, claims and submit records.
- **Verdicts** (:func:`merge_slurm`, pure): every SLURM state is mapped through
  :data:`STATE_MAP`; the scheduler's answer wins over the local cache, but a job not in the
  queue is never by itself ``completed``, an unanswered ``squeue`` or ``sacct`` (or a line
  of its answer that may be the job's and cannot be read) is no information, a requeued job
  goes back to ``pending``, and a final SLURM state that the wrapper's record contradicts is a
  reported conflict decided by the stronger evidence.
"""

from __future__ import annotations

import re
import shlex
import signal as _signal
from dataclasses import dataclass, field
from enum import StrEnum

from jobkit.backends.base import FenceOutcome, LaunchOutcome, LaunchRequest, LaunchState
from jobkit.backends.tmux import TmuxBackend
from jobkit.errors import (
    ConfigError,
    JobkitError,
    OutcomeUnknown,
    RemoteCommandFailed,
    SchedulerUnreachable,
    TransportError,
)
from jobkit.ids import validate_id
from jobkit.merge import LOST_REASON, NEVER_STARTED_REASON, SIGKILL_REASON, UNKNOWN_EXIT
from jobkit.models import Evidence, HostState, JobStatus, Known, SchedulerEvidence, Source, Verdict
from jobkit.probe import JobQuery, ProbeResult, _claim, _file_evidence
from jobkit.remote import base_dir_word
from jobkit.transport import CommandResult, Transport


# --- states ---------------------------------------------------------------------------------
class SlurmState(StrEnum):
    """Every job state of ``squeue %T`` and ``sacct State`` (Slurm 22.05)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    STOPPED = "STOPPED"
    SIGNALING = "SIGNALING"
    STAGE_OUT = "STAGE_OUT"
    RESIZING = "RESIZING"
    REQUEUED = "REQUEUED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    REQUEUE_FED = "REQUEUE_FED"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    REVOKED = "REVOKED"
    UNKNOWN = "UNKNOWN"  # anything else: no information


@dataclass(frozen=True)
class Mapping:
    status: JobStatus | None  # None: no information (the state says nothing of how the job is)
    killed: bool = False  # a final state in which the scheduler ended the job (not the job itself)
    why: str = ""


#: each SLURM state -> jobkit's status. Not final in SLURM's sense: the job may still run (or run
#: again). REVOKED (a federated sibling was removed: the job runs on another cluster) and UNKNOWN
#: are no information.
STATE_MAP: dict[SlurmState, Mapping] = {
    SlurmState.PENDING: Mapping(JobStatus.PENDING, why="waiting for resources or priority"),
    SlurmState.CONFIGURING: Mapping(JobStatus.RUNNING, why="allocated, nodes booting"),
    SlurmState.RUNNING: Mapping(JobStatus.RUNNING),
    SlurmState.COMPLETING: Mapping(JobStatus.RUNNING, why="ending: some processes still finishing"),
    SlurmState.SUSPENDED: Mapping(JobStatus.RUNNING, why="suspended (keeps its allocation)"),
    SlurmState.STOPPED: Mapping(JobStatus.RUNNING, why="stopped by SIGSTOP (keeps its allocation)"),
    SlurmState.SIGNALING: Mapping(JobStatus.RUNNING, why="being signalled"),
    SlurmState.STAGE_OUT: Mapping(JobStatus.RUNNING, why="staging out"),
    SlurmState.RESIZING: Mapping(JobStatus.RUNNING, why="being resized"),
    SlurmState.REQUEUED: Mapping(JobStatus.PENDING, why="requeued: it runs again"),
    SlurmState.REQUEUE_HOLD: Mapping(JobStatus.PENDING, why="requeued and held"),
    SlurmState.REQUEUE_FED: Mapping(JobStatus.PENDING, why="requeued by the federation"),
    SlurmState.RESV_DEL_HOLD: Mapping(JobStatus.PENDING, why="held: its reservation was deleted"),
    SlurmState.SPECIAL_EXIT: Mapping(JobStatus.PENDING, why="held after a special exit (requeue)"),
    SlurmState.COMPLETED: Mapping(JobStatus.COMPLETED),
    SlurmState.CANCELLED: Mapping(JobStatus.CANCELLED, True, "cancelled (scancel)"),
    SlurmState.FAILED: Mapping(JobStatus.FAILED),
    SlurmState.TIMEOUT: Mapping(JobStatus.TIMEOUT, True, "reached its time limit"),
    SlurmState.NODE_FAIL: Mapping(JobStatus.NODE_FAIL, True, "a node of its allocation failed"),
    SlurmState.PREEMPTED: Mapping(JobStatus.PREEMPTED, True, "preempted"),
    SlurmState.BOOT_FAIL: Mapping(JobStatus.BOOT_FAIL, True, "its nodes failed to boot"),
    SlurmState.DEADLINE: Mapping(JobStatus.DEADLINE, True, "reached its deadline"),
    SlurmState.OUT_OF_MEMORY: Mapping(JobStatus.OUT_OF_MEMORY, True, "out of memory"),
    SlurmState.REVOKED: Mapping(None, why="revoked here (a federated sibling runs it)"),
    SlurmState.UNKNOWN: Mapping(None, why="state not known to jobkit"),
}


def slurm_state(text: str) -> SlurmState:
    """``CANCELLED by 1000`` -> CANCELLED; ``CANCELLED+`` (truncated) -> CANCELLED; anything not
    a SLURM state -> UNKNOWN."""
    word = text.strip().split(" ", 1)[0].rstrip("+")
    try:
        return SlurmState(word)
    except ValueError:
        return SlurmState.UNKNOWN


def parse_exit_code(text: str) -> tuple[int, int] | None:
    """``ExitCode`` ``N:M`` -> (return code, signal); None when it is not that."""
    m = re.fullmatch(r"(\d{1,3}):(\d{1,3})", text.strip())
    if m is None:
        return None
    rc, sig = int(m.group(1)), int(m.group(2))
    return (rc, sig) if rc <= 255 and sig <= 255 else None


def signal_name(num: int) -> str:
    try:
        return _signal.Signals(num).name.removeprefix("SIG")
    except ValueError:
        return str(num)


# --- parsers (pure) -------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueRow:
    job_id: str  # SLURM's id
    state: str  # raw
    reason: str
    name: str


@dataclass(frozen=True)
class AcctRow:
    job_id: str
    state: str
    exit: tuple[int, int] | None
    name: str


@dataclass
class Parsed:
    rows: list[QueueRow | AcctRow] = field(default_factory=list)
    unparsable: list[str] = field(default_factory=list)


_JOBID = re.compile(r"\d+(?:_\d+)?(?:\+\d+)?")
#: ``squeue -h -t all -o '%i|%T|%r|%j'``: the name last (it may hold '|')
SQUEUE_FORMAT = "%i|%T|%r|%j"
#: ``sacct -n -P -X -o JobID,State,ExitCode,JobName``
SACCT_FIELDS = "JobID,State,ExitCode,JobName"


def parse_squeue(text: str) -> Parsed:
    """Rows of ``squeue -h -o SQUEUE_FORMAT``; a line that is not one is reported, never read."""
    out = Parsed()
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 3)
        if len(parts) != 4 or not _JOBID.fullmatch(parts[0]) or not re.fullmatch(r"[A-Z_]+", parts[1]):
            out.unparsable.append(line)
            continue
        out.rows.append(QueueRow(parts[0], parts[1], parts[2], parts[3]))
    return out


def parse_sacct(text: str) -> Parsed:
    """Rows of ``sacct -n -P -o SACCT_FIELDS``; a line that is not one is reported, never read."""
    out = Parsed()
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 3)
        if len(parts) != 4 or not _JOBID.fullmatch(parts[0]) or not re.fullmatch(r"[A-Z_]+(?: by \d+)?\+?",
                                                                                     parts[1]):
            out.unparsable.append(line)
            continue
        ec = parse_exit_code(parts[2])
        if ec is None:
            out.unparsable.append(line)
            continue
        out.rows.append(AcctRow(parts[0], parts[1], ec, parts[3]))
    return out


def _sort_key(job_id: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", job_id))


def _pick(rows: list[QueueRow] | list[AcctRow], name: str, sid: str | None) -> QueueRow | AcctRow | None:
    """The row of this submission: its scheduler id when known, else the newest of its name."""
    if sid:
        for r in rows:
            if r.job_id == sid:
                return r
        return None
    mine = [r for r in rows if r.name == name]
    return max(mine, key=lambda r: _sort_key(r.job_id)) if mine else None


def _subject(line: str) -> tuple[str | None, str | None]:
    """The SLURM id and the job name an unparsable ``id|...|name`` line names, where each can
    be read (None where not)."""
    parts = line.split("|", 3)
    lid = parts[0].strip()
    return (lid if _JOBID.fullmatch(lid) else None), (parts[3] if len(parts) == 4 else None)


def _may_be(lines: list[str], name: str, sid: str | None, listed: bool) -> list[str]:
    """The unparsable lines that may be this job's (its own first): a line whose id (when the
    job's is known) or else name can be read is the job's when it is the job's; a line naming
    no job may be any job's that the answer does not otherwise list."""
    own, anyone = [], []
    for line in lines:
        lid, lname = _subject(line)
        if sid is not None and lid is not None:
            if lid == sid:
                own.append(line)
        elif lname is not None:
            if lname == name:
                own.append(line)
        elif not listed:
            anyone.append(line)
    return own + anyone


def _unparsable_detail(lines: list[str]) -> str:
    more = f" (+{len(lines) - 3} more)" if len(lines) > 3 else ""
    return "unparsable line(s) that may be this job's: " + " / ".join(repr(x) for x in lines[:3]) + more


# --- the probe ------------------------------------------------------------------------------
PROBE = r"""
b=$1; user=$(id -un)
printf '==now %s\n' "$(date +%s)"
printf '==boot %s\n' "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
ids=; names=
while read -r id fence; do
  case $id in ''|*[!A-Za-z0-9_-]*) continue ;; esac
  ids="$ids $id"; names="$names,$id"
  if [ "$fence" = F ] && [ ! -e "$b/jobs/$id.wrapper.log" ] && [ ! -s "$b/jobs/$id.submit" ]; then
    mkdir -p "$b/jobs" && (set -C; printf 'jobkit-fence %s: never submitted\n' "$(date +%s)" \
      >"$b/jobs/$id.wrapper.log") 2>/dev/null && printf '==fenced %s\n' "$id"
  fi
done
names=${names#,}
printf '==squeue\n'
out=$(squeue -h -t all -u "$user" -o '%i|%T|%r|%j' 2>&1); rc=$?
printf '%s\n==squeue_rc %s\n' "$out" "$rc"
printf '==sacct\n'
if [ -n "$names" ]; then
  out=$(sacct -n -P -X -S now-14days -E now -u "$user" --name="$names" -o JobID,State,ExitCode,JobName 2>&1); rc=$?
  case $out in
    *'accounting storage is disabled'*)
      printf '==sacct_mode completion_log\n'
      out=$(sacct -c -n -P -X -S now-14days -E now -u "$user" --name="$names" \
        -o JobID,State,ExitCode,JobName 2>&1); rc=$? ;;
  esac
  printf '%s\n' "$out"
else rc=0; fi
printf '==sacct_rc %s\n' "$rc"
printf '==files\n'
if [ -n "$ids" ] && cd "$b/jobs" 2>/dev/null; then
  set -f
  set -- $ids
  set +f
  for id do set -- "$@" "$id.status" "$id.wrapper.log" "$id.submit"; shift; done
  grep -H -m1 '' -- "$@" 2>/dev/null
fi
printf '==end\n'
"""


def parse_probe(output: str, queries: list[JobQuery]) -> ProbeResult:
    """The evidence for each query from the probe's answer (pure). An answer cut short is an
    unreachable host; a command that did not answer is no information for every job."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    fenced: set[str] = set()
    current = ""
    for line in output.split("\n"):
        if line.startswith("=="):
            name, _, rest = line[2:].partition(" ")
            if name == "fenced":
                fenced.add(rest)
                continue
            if name == "sacct_mode":  # a note inside the sacct section, not a section of its own
                header[name] = rest
                continue
            current, header[name] = name, rest
            sections.setdefault(name, [])
        elif current:
            sections[current].append(line)
    if "end" not in header:
        return ProbeResult(HostState(reachable=False, error="probe output incomplete (connection lost mid-answer?)"),
                           raw=output)
    try:
        now: float | None = float(header.get("now", ""))
    except ValueError:
        now = None
    host = HostState(reachable=True, boot_id=header.get("boot") or None, now_epoch=now)

    squeue_text = "\n".join(sections.get("squeue", []))
    queue_ok = header.get("squeue_rc") == "0"
    queue = parse_squeue(squeue_text) if queue_ok else Parsed()
    sacct_text = "\n".join(sections.get("sacct", []))
    acct_ok = header.get("sacct_rc") == "0"
    acct = parse_sacct(sacct_text) if acct_ok else Parsed()
    acct_detail = "" if acct_ok else (sacct_text.strip().splitlines() or ["no answer"])[-1]
    acct_state = "ok" if acct_ok else ("disabled" if "disabled" in sacct_text else "error")

    files: dict[tuple[str, str], str] = {}
    for line in sections.get("files", []):
        fname, sep, content = line.partition(":")
        if not sep:
            continue
        jid, _, kind = fname.partition(".")
        files[(jid, kind)] = content

    result = ProbeResult(host, raw=output)
    qrows = [r for r in queue.rows if isinstance(r, QueueRow)]
    arows = [r for r in acct.rows if isinstance(r, AcctRow)]
    for q in queries:
        submit = files.get((q.job_id, "submit"), "").split()
        sid = submit[1] if len(submit) > 1 and _JOBID.fullmatch(submit[1]) else q.scheduler_id
        qs: tuple[str, str | None, str | None, str | None] = ("error", None, None, None)
        qdetail = ""
        if queue_ok:
            row = _pick(qrows, q.job_id, sid)
            # a line that may be this job's and cannot be read: no information, never "absent"
            doubt = _may_be(queue.unparsable, q.job_id, sid, isinstance(row, QueueRow))
            if doubt:
                qdetail = _unparsable_detail(doubt)
            elif isinstance(row, QueueRow):
                qs = ("listed", row.state, row.reason, row.job_id)
            else:
                qs = ("absent", None, None, None)
        else:
            qdetail = (squeue_text.strip().splitlines() or ["no answer"])[-1]
        adetail = acct_detail
        arow = _pick(arows, q.job_id, sid or qs[3]) if acct_ok else None
        adoubt = _may_be(acct.unparsable, q.job_id, sid or qs[3], isinstance(arow, AcctRow)) if acct_ok else []
        acc: tuple[str, str | None, int | None, int | None]
        if adoubt:
            arow, adetail = None, _unparsable_detail(adoubt)
            acc = ("error", None, None, None)
        elif isinstance(arow, AcctRow):
            ex = arow.exit or (None, None)
            acc = ("ok", arow.state, ex[0], ex[1])
        else:
            acc = ("absent" if acct_ok else acct_state, None, None, None)
        detail = "; ".join(d for d in (f"squeue: {qdetail}" if qdetail else "",
                                       f"sacct: {adetail}" if adetail else "") if d)
        sched = SchedulerEvidence(qs[0], qs[1], qs[2], acc[0], acc[1], acc[2], acc[3],
                                  sid or qs[3] or (arow.job_id if isinstance(arow, AcctRow) else None), detail,
                                  tuple(queue.unparsable + acct.unparsable))
        state_line = files.get((q.job_id, "status"))
        sf = _file_evidence(q.job_id, state_line is not None, [state_line] if state_line is not None else None)
        claim = _claim(files.get((q.job_id, "wrapper.log")), q.job_id in fenced, {})
        result.evidence[q.job_id] = Evidence(q.job_id, host, None, sf, claim=claim, scheduler=sched)
    return result


# --- the verdict (pure) ---------------------------------------------------------------------
def _said(ev: Evidence) -> dict[str, str]:
    s = ev.scheduler
    said: dict[str, str] = {}
    if s is not None:
        said["queue"] = s.queue_state or s.queue
        said["accounting"] = s.acct_state or s.accounting
        if s.unparsable:
            said["unparsable"] = " / ".join(s.unparsable[:3])
    sf = ev.file
    said["state_file"] = (sf.status or sf.state) if sf is not None else "not asked"
    return said


def merge_slurm(ev: Evidence, known: Known, *, grace: float = 30.0) -> Verdict:
    """The verdict the evidence of a SLURM job supports (see the module's rules)."""
    said = _said(ev)
    jid = ev.job_id
    if not ev.host.reachable:
        said["host"] = "unavailable"
        return Verdict(jid, known.status, Source.NONE,
                       f"Host unavailable ({ev.host.error or 'no answer'}): state unavailable, last known status kept",
                       stale=True, exit_code=known.exit_code, said=said)
    s = ev.scheduler or SchedulerEvidence("error", detail="no scheduler evidence")
    sf = ev.file
    wrapper_final = sf is not None and sf.state == "ok" and sf.status in ("completed", "failed")

    # the scheduler's final word: the queue's (a finished job still listed), else accounting's
    final_state: SlurmState | None = None
    final_src = Source.SCHEDULER
    code: int | None = None
    sig: int | None = None
    if s.queue == "listed" and s.queue_state is not None:
        st = slurm_state(s.queue_state)
        m = STATE_MAP[st]
        if m.status is not None and not m.status.final:
            # still in the queue: not over, whatever a record of an earlier run says
            if known.status.final:
                return _kept(jid, known, said, f"the queue says {st.value}")
            why = f"{st.value}" + (f" ({s.queue_reason})" if s.queue_reason and s.queue_reason != "None" else "")
            if m.status is JobStatus.PENDING and known.status is JobStatus.RUNNING:
                why += "; back in the queue after it ran (requeued): it runs again"
            return Verdict(jid, m.status, Source.SCHEDULER, f"{m.status.value} per squeue: {why}", said=said,
                           alive=m.status is JobStatus.RUNNING)
        if m.status is not None:
            final_state = st
            if s.accounting == "ok" and s.acct_state is not None and slurm_state(s.acct_state) is st:
                code, sig = s.acct_exit, s.acct_signal
    if final_state is None and s.accounting == "ok" and s.acct_state is not None:
        st = slurm_state(s.acct_state)
        m = STATE_MAP[st]
        if m.status is not None and m.status.final:
            final_state, final_src, code, sig = st, Source.ACCOUNTING, s.acct_exit, s.acct_signal
        elif m.status is not None and s.queue == "absent":
            # accounting lags behind the queue (or the queue lost it): no information
            said["accounting"] = f"{st.value} (behind the queue)"

    if final_state is not None:
        return _final(ev, known, said, final_state, final_src, code, sig)

    # no final word from the scheduler: the queue did not answer, or does not list the job and
    # accounting has nothing (disabled, down, lagging, purged)
    if known.status.final:
        return _kept(jid, known, said, "the scheduler has no final record now")
    claim = ev.claim
    if claim is not None and claim.state == "fenced" and not wrapper_final and (sf is None or sf.state == "missing"):
        if s.queue == "listed":
            return Verdict(jid, known.status, Source.NONE, "fenced id still in the queue: waiting for it to end",
                           said=said)
        return Verdict(jid, JobStatus.FAILED, Source.NONE,
                       f"{NEVER_STARTED_REASON} (its id is fenced on the cluster, so it can never start)", said=said)
    no_info = s.queue == "error"
    nothing_why = (f"no information from the scheduler ({s.detail})" if no_info else
                   "not in the queue and no accounting record "
                   f"(accounting {s.accounting}{': ' + s.detail if s.detail else ''})")
    if wrapper_final and sf is not None and sf.status is not None:
        if no_info:
            # the wrapper's record is one source; the scheduler may still hold it (a requeue)
            return Verdict(jid, known.status, Source.NONE,
                           f"{nothing_why}; the wrapper recorded {sf.status} (exit {sf.exit_code}): "
                           "kept until the scheduler answers", stale=True, exit_code=known.exit_code, said=said)
        st_ = JobStatus(sf.status)
        return Verdict(jid, st_, Source.STATE_FILE,
                       f"{st_.value} (exit {sf.exit_code}) per the wrapper's state file; {nothing_why}",
                       exit_code=sf.exit_code, signal=sf.signal, said=said)
    if no_info:
        return Verdict(jid, known.status, Source.NONE, f"{nothing_why}: last known status kept", stale=True,
                       exit_code=known.exit_code, said=said)
    # the queue answered without the job, accounting has nothing final, the wrapper no final record
    submitted = ((sf is not None and sf.state == "ok") or (claim is not None and claim.state == "wrapper")
                 or s.scheduler_id is not None)
    if not submitted and known.status in (JobStatus.QUEUED, JobStatus.PENDING):
        return Verdict(jid, known.status, Source.NONE, "not submitted to the scheduler yet", said=said)
    now, ref = ev.host.now_epoch, known.last_alive_epoch or known.started_epoch or known.submitted_epoch
    if ref is not None and now is not None and now - ref < grace:
        return Verdict(jid, known.status, Source.NONE,
                       f"{nothing_why}; within the {grace:.0f}s grace period (accounting may lag)", said=said)
    if sf is not None and sf.state == "ok" and sf.status == "running":
        reason = f"{SIGKILL_REASON}: the wrapper recorded running and is gone with the job; {nothing_why}; "
    else:
        reason = f"{LOST_REASON}: {nothing_why}; "
    return Verdict(jid, JobStatus.LOST, Source.NONE, reason + UNKNOWN_EXIT, said=said)


def _final(ev: Evidence, known: Known, said: dict[str, str], st: SlurmState, src: Source, code: int | None,
           sig: int | None) -> Verdict:
    jid, sf = ev.job_id, ev.file
    m = STATE_MAP[st]
    assert m.status is not None
    status = m.status
    # ExitCode 0:9 is "killed by signal 9": the shell's 128+9, as the wrapper records a signal
    exit_code = 128 + sig if code == 0 and sig else code
    signal = signal_name(sig) if sig else None
    reason = f"{status.value} per {'squeue' if src is Source.SCHEDULER else 'sacct'} ({st.value}"
    reason += f", ExitCode {code}:{sig})" if code is not None else ")"
    if m.why:
        reason += f": {m.why}"
    conflict = False
    source = src
    if sf is not None and sf.state == "ok" and sf.status in ("completed", "failed"):
        w_status = JobStatus(sf.status)
        if m.killed:
            if w_status is JobStatus.COMPLETED or sf.signal is None:
                # the job ended by itself before the scheduler's kill: the wrapper saw its exit
                conflict = True
                reason = (f"{w_status.value} (exit {sf.exit_code}) per the wrapper's state file; CONFLICT: "
                          f"{reason} says {status.value}")
                status, exit_code, signal, source = w_status, sf.exit_code, sf.signal, Source.STATE_FILE
            else:
                exit_code, signal = sf.exit_code, sf.signal or signal
                reason += f"; the wrapper recorded {sf.status} (exit {sf.exit_code}, signal {sf.signal})"
        else:
            if (w_status, sf.exit_code) != (status, code):
                # the wrapper's record is the job's own wait status: stronger than the batch step's
                conflict = code is not None or w_status is not status
                reason = (f"{w_status.value} (exit {sf.exit_code}) per the wrapper's state file"
                          + (f"; CONFLICT: {reason} says {status.value}" if conflict else f"; {reason}"))
                status, exit_code, signal, source = w_status, sf.exit_code, sf.signal, Source.STATE_FILE
            else:
                signal = sf.signal
    elif status is JobStatus.COMPLETED and code == 0 and (sf is None or sf.state != "ok"):
        reason += "; the wrapper left no final record"
    if ev.claim is not None and ev.claim.state == "fenced" and (sf is None or sf.state == "missing"):
        status, exit_code, signal, source = JobStatus.FAILED, None, None, Source.NONE
        reason = f"{NEVER_STARTED_REASON} (its id was fenced: the batch job's wrapper refused it; {st.value})"
    if known.status.final:
        if (known.status, known.exit_code) == (status, exit_code):
            return Verdict(jid, status, source, reason, conflict=conflict, exit_code=exit_code, signal=signal,
                           said=said)
        return Verdict(jid, known.status, Source.NONE,
                       f"{known.status.value} (exit {known.exit_code}) already recorded and kept; CONFLICT: "
                       f"now {reason}", conflict=True, exit_code=known.exit_code, said=said)
    return Verdict(jid, status, source, reason, conflict=conflict, exit_code=exit_code, signal=signal, said=said)


def _kept(jid: str, known: Known, said: dict[str, str], why: str) -> Verdict:
    return Verdict(jid, known.status, Source.NONE,
                   f"{known.status.value} already recorded; {why} (kept: a final status never changes)",
                   exit_code=known.exit_code, said=said)


# --- submit, cancel -------------------------------------------------------------------------
#: exit codes of the submit scripts (as the tmux backend's)
SUBMIT_ID_USED = 67
SUBMIT_FAILED = 68
SUBMIT_FENCED = 69

_RESOURCE_FLAGS = {"time": "--time", "cpus": "--cpus-per-task", "mem": "--mem", "partition": "--partition"}
_RESOURCE_RE = {"time": re.compile(r"(\d+-)?\d+(:\d+){0,2}|\d+-\d+|UNLIMITED|INFINITE", re.I),
                "cpus": re.compile(r"[1-9]\d{0,4}"), "mem": re.compile(r"[1-9]\d{0,9}[KMGT]?", re.I),
                "partition": re.compile(r"[A-Za-z0-9_.-]{1,64}")}


def resource_args(resources: dict[str, str]) -> list[str]:
    """sbatch options for the request's resources; a bad value is a ConfigError."""
    out = []
    for k, v in resources.items():
        if k not in _RESOURCE_FLAGS:
            raise ConfigError(f"unknown resource {k!r} (known: {', '.join(_RESOURCE_FLAGS)})")
        if not _RESOURCE_RE[k].fullmatch(v):
            raise ConfigError(f"bad --{k} value {v!r}")
        out.append(f"{_RESOURCE_FLAGS[k]}={v}")
    return out


def batch_script(req: LaunchRequest) -> str:
    """The batch script: move a previous run's files aside when SLURM requeued the job (unless
    the id is fenced), then exec the wrapper without a database, output kept in files."""
    validate_id(req.job_id)
    if not req.argv:
        raise JobkitError("empty command")
    extra = " ".join(shlex.quote(f"{k}={v}") for k, v in req.env.items())
    return "\n".join([
        "#!/bin/sh",
        f"b={base_dir_word(req.base_dir)}; id={req.job_id}",
        "if [ \"${SLURM_RESTART_COUNT:-0}\" -gt 0 ]; then",
        "  c=; { read -r c <\"$b/jobs/$id.wrapper.log\"; } 2>/dev/null",
        "  case $c in 'jobkit-fence '*) ;; *)",
        "    for f in wrapper.log status out err; do",
        "      [ ! -e \"$b/jobs/$id.$f\" ] || mv -f \"$b/jobs/$id.$f\" \"$b/jobs/$id.run$SLURM_RESTART_COUNT.$f\"",
        "    done ;;",
        "  esac",
        "fi",
        f"exec env JOBKIT_BASE_DIR=\"$b\" JOBKIT_DB=none JOBKIT_OUTPUT=files {extra} \"$b/bin/job_wrapper.sh\" "
        + shlex.join([req.job_id, *req.argv]),
        "",
    ])


def _head(req: LaunchRequest) -> list[str]:
    validate_id(req.job_id)
    if req.token is None or not req.token.isalnum():
        raise JobkitError("a launch needs an alphanumeric token (the submission's)")
    return [f"b={base_dir_word(req.base_dir)}; id={req.job_id}; tok={req.token}"
            + (f"; cwd={base_dir_word(req.cwd)}" if req.cwd else ""),
            "sub=\"$b/jobs/$id.submit\"",
            f"used() {{ echo \"jobkit: job id $id already used on this cluster\" >&2; exit {SUBMIT_ID_USED}; }}",
            "mine() { t=; { read -r t _ <\"$sub\"; } 2>/dev/null; [ \"$t\" = \"$tok\" ]; }"]


def _prepare(req: LaunchRequest) -> list[str]:
    return [
        f"mkdir -p \"$b/jobs\" || {{ echo \"jobkit: cannot create $b/jobs\" >&2; exit {SUBMIT_FAILED}; }}",
        f"[ -x \"$b/bin/job_wrapper.sh\" ] || {{ echo \"jobkit: no wrapper in $b/bin (deploy first)\" >&2; "
        f"exit {SUBMIT_FAILED}; }}",
        "command -v sbatch >/dev/null || { echo 'jobkit: sbatch not found on this host' >&2; "
        f"exit {SUBMIT_FAILED}; }}",
        *([f"[ -d \"$cwd\" ] || {{ echo \"jobkit: no directory $cwd on this host\" >&2; exit {SUBMIT_FAILED}; }}"]
          if req.cwd else []),
    ]


def _register() -> list[str]:
    """The submit record ``<id>.submit`` (the token, later the scheduler id), made with O_EXCL."""
    return [
        "if [ -e \"$sub\" ]; then mine || used; echo 'already registered'",
        "else",
        "  [ -e \"$b/jobs/$id.wrapper.log\" ] || [ -e \"$b/jobs/$id.status\" ] && used",
        "  (set -C; printf '%s\\n' \"$tok\" >\"$sub\") 2>/dev/null || { mine || used; }",
        "fi",
    ]


def _start(req: LaunchRequest) -> list[str]:
    opts = ["--parsable", f"--job-name={req.job_id}", "--output=$b/jobs/$id.batch.log", "--open-mode=append",
            *resource_args(req.resources)]
    if req.cwd:
        opts.append("--chdir=$cwd")
    sbatch = "sbatch " + " ".join(f"\"{o}\"" for o in opts)
    return [
        "c=; { read -r c <\"$b/jobs/$id.wrapper.log\"; } 2>/dev/null",
        f"case $c in 'jobkit-fence '*) echo \"jobkit: the id $id is fenced: the job never starts\" >&2; "
        f"exit {SUBMIT_FENCED};; esac",
        "mine || used",
        "set -- $(cat \"$sub\")",
        "if [ -n \"${2:-}\" ]; then echo \"already launched $2\"; exit 0; fi",
        # a lost answer of an earlier sbatch of this submission: the job is in the queue by name
        "if q=$(squeue -h -t all -u \"$(id -un)\" -n \"$id\" -o %i 2>&1); then",
        "  if [ -n \"$q\" ]; then set -- $q; printf '%s %s\\n' \"$tok\" \"$1\" >\"$sub\"; "
        "echo \"already launched $1\"; exit 0; fi",
        "else printf 'jobkit: squeue: %s\\n' \"$q\" >&2; exit 70",
        "fi",
        f"if out=$({sbatch} <<'JOBKIT_BATCH_EOF' 2>&1",
        batch_script(req) + "JOBKIT_BATCH_EOF",
        "); then",
        "  sid=$(printf '%s\\n' \"$out\" | tail -n 1); sid=${sid%%;*}",
        "  printf '%s %s\\n' \"$tok\" \"$sid\" >\"$sub\"; echo \"submitted $sid\"; exit 0",
        "fi",
        # sbatch refused it: fence the id so that a job it may have queued anyway never runs
        "if (set -C; printf 'jobkit-fence %s: sbatch failed\\n' \"$(date +%s)\" >\"$b/jobs/$id.wrapper.log\") "
        "2>/dev/null; then",
        f"  printf 'jobkit: sbatch failed: %s\\n' \"$out\" >&2; exit {SUBMIT_FENCED}",
        "fi",
        "printf 'jobkit: sbatch failed and the id could not be fenced: %s\\n' \"$out\" >&2; exit 70",
    ]


#: the cancel (after ``b=BASE; id=ID``): the controller asked first (``scontrol ping`` answers
#: at once when it is down; ``scancel`` retries for MessageTimeout), then ``scancel -v``, whose
#: exit status is 0 for a job the controller does not know or that had ended: only its verbose
#: output tells them from a cancel. Each answer framed for :func:`read_cancel`.
CANCEL = r"""
set -- $(cat "$b/jobs/$id.submit" 2>/dev/null); sid=${2:-}; u=$(id -un)
p=$(scontrol ping 2>&1); printf '==ping %s\n%s\n' "$?" "$p"
case $p in *' is UP'*) ;; *) exit 0 ;; esac
if [ -n "$sid" ]; then
  out=$(scancel -v "$sid" 2>&1); printf '==scancel %s %s\n%s\n' "$?" "$sid" "$out"
elif q=$(squeue -h -u "$u" -n "$id" -o %i 2>&1); then
  if [ -z "$q" ]; then printf '==not-found\n'; exit 0; fi
  out=$(scancel -v -u "$u" -n "$id" 2>&1); printf '==scancel-name %s %s\n%s\n' "$?" "$id" "$out"
else printf '==squeue 1\n%s\n' "$q"
fi
"""

#: a controller that cannot be reached: the request never got to it
_NO_CONTROLLER = ("Unable to contact slurm controller", "Connection refused", "is DOWN")
#: a controller reached that did not answer: the request may have acted
_NO_ANSWER = ("Socket timed out", "Zero Bytes were transmitted")


@dataclass(frozen=True)
class CancelAnswer:
    """What a cancel's answer says: ``sent`` (scancel took it), ``gone`` (the controller does
    not know the job: purged), ``ended`` (it had already ended), ``down`` (the controller did
    not answer: nothing was done), ``unknown`` (it may have acted), ``not_found`` (no id
    recorded, nothing of that name queued), ``error`` (anything else, or no answer)."""

    kind: str
    sid: str | None = None
    detail: str = ""


def read_cancel(stdout: str) -> CancelAnswer:
    """The answer of :data:`CANCEL` (pure)."""
    sections: list[tuple[list[str], list[str]]] = []
    for line in stdout.split("\n"):
        if line.startswith("=="):
            sections.append((line[2:].split(), []))
        elif sections:
            sections[-1][1].append(line)
    if not sections or sections[0][0][:1] != ["ping"]:
        return CancelAnswer("error", detail=f"no answer to read: {stdout.strip()[-200:]!r}")
    ping = "; ".join(x.strip() for x in sections[0][1] if x.strip())
    if sections[0][0][1:] == ["127"]:
        return CancelAnswer("error", detail=f"no scontrol on this host: {ping}")
    if " is UP" not in ping:
        return CancelAnswer("down", detail=ping or "scontrol ping said nothing")
    if len(sections) < 2:
        return CancelAnswer("error", detail="the answer stops after scontrol ping")
    head, body = sections[1]
    lines = [x.strip() for x in body if x.strip()]
    errors = [x for x in lines if "error" in x.lower()]
    last = (errors or lines or [""])[-1]
    if head[0] == "not-found":
        return CancelAnswer("not_found", detail="no job of that name in the queue")
    if head[0] == "squeue":
        kind = "down" if any(m in last for m in _NO_CONTROLLER) else "error"
        return CancelAnswer(kind, detail=f"squeue: {last or 'no answer'}")
    if head[0] not in ("scancel", "scancel-name") or len(head) < 3 or not head[1].isdigit():
        return CancelAnswer("error", detail=f"unreadable answer: {stdout.strip()[-200:]!r}")
    rc, sid = int(head[1]), (head[2] if head[0] == "scancel" else None)
    if any("Invalid job id" in x for x in errors):
        return CancelAnswer("gone", sid, last)
    if any("already completing or completed" in x for x in errors):
        return CancelAnswer("ended", sid, last)
    if any(m in x for x in errors for m in _NO_CONTROLLER):
        return CancelAnswer("down", sid, last)
    if any(m in x for x in errors for m in _NO_ANSWER):
        return CancelAnswer("unknown", sid, last)
    if rc != 0 or errors:
        return CancelAnswer("error", sid, f"scancel exit {rc}: {last}")
    return CancelAnswer("sent", sid)


def _outcome(r: CommandResult, already: str = "already launched") -> LaunchOutcome:
    why = (r.stderr.strip().splitlines() or [""])[-1]
    sid = None
    for word in ("submitted ", "already launched "):
        for line in r.stdout.splitlines():
            if line.startswith(word):
                sid = line[len(word):].strip() or None
    if r.exit_status == 0:
        return LaunchOutcome(LaunchState.ALREADY if already in r.stdout else LaunchState.LAUNCHED, scheduler_id=sid)
    if r.exit_status == SUBMIT_ID_USED:
        return LaunchOutcome(LaunchState.ID_USED, why)
    if r.exit_status in (SUBMIT_FAILED, SUBMIT_FENCED):
        return LaunchOutcome(LaunchState.FAILED, why or "submit failed")
    return LaunchOutcome(LaunchState.UNKNOWN, f"the submit ended with exit {r.exit_status}: {why}")


class SlurmBackend:
    """Jobs as SLURM batch jobs running jobkit's wrapper (see the module)."""

    name = "slurm"

    async def launch_many(self, transport: Transport, reqs: list[LaunchRequest], *,
                          timeout: float) -> list[LaunchOutcome]:
        """Several launches in ONE round trip (each in a subshell of its own, its output framed):
        the batched submit. Each outcome is as a single prepare + register + start's; an answer cut short leaves the
        launches it does not cover UNKNOWN."""
        parts = []
        for i, req in enumerate(reqs):
            script = "\n".join([*_head(req), *_prepare(req), *_register(), *_start(req)])
            parts.append(f"echo '==L {i}'; ( {script}\n) 2>&1; echo \"==X {i} $?\"")
        # the scripts go on stdin: an exec request's command line is bounded (sshd drops the
        # connection for a long one)
        r = await transport.run("sh -s", stdin="\n".join(parts) + "\n", timeout=timeout)
        out: list[LaunchOutcome] = [LaunchOutcome(LaunchState.UNKNOWN, "no answer for this launch")] * len(reqs)
        text: list[str] = []
        for line in r.stdout.splitlines():
            if line.startswith("==L "):
                text = []
            elif line.startswith("==X "):
                _, idx, rc = line.split()
                body = "\n".join(text)
                out[int(idx)] = _outcome(CommandResult("launch", int(rc), body, body, 0.0))
            else:
                text.append(line)
        return out

    async def prepare(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> LaunchOutcome:
        return _outcome(await transport.run("\n".join([*_head(req), *_prepare(req)]), timeout=timeout), "-")

    async def register(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> LaunchOutcome:
        return _outcome(await transport.run("\n".join([*_head(req), *_register()]), timeout=timeout),
                        "already registered")

    async def start(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> LaunchOutcome:
        return _outcome(await transport.run("\n".join([*_head(req), *_start(req)]), timeout=timeout))

    async def fence(self, transport: Transport, job_id: str, base_dir: str | None, *,
                    timeout: float) -> FenceOutcome:
        # the claim the batch script's wrapper needs: fenced, it refuses the id (exit 67)
        return await TmuxBackend().fence(transport, job_id, base_dir, timeout=timeout)

    async def unregister(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> None:
        script = [*_head(req), "if mine; then set -- $(cat \"$sub\"); [ -n \"${2:-}\" ] || rm -f \"$sub\"; fi"]
        await transport.run("\n".join(script), timeout=timeout, check=True)

    async def cancel(self, transport: Transport, job_id: str, base_dir: str | None, *, timeout: float) -> str:
        """``scancel`` of the job (by its scheduler id when recorded, else by its name): SLURM
        sends TERM to the job's steps (the wrapper forwards it to the job), KILL after KillWait.
        A job the controller no longer knows (purged after MinJobAge) or that had already ended
        is nothing to cancel (said so: its status comes from the evidence); a controller that
        does not answer is :class:`SchedulerUnreachable` (nothing was cancelled)."""
        validate_id(job_id)
        r = await transport.run(f"b={base_dir_word(base_dir)}; id={job_id}\n{CANCEL}", timeout=timeout)
        a = read_cancel(r.stdout)
        if a.kind == "sent":
            return f"scancel {a.sid}" if a.sid else f"scancel --name {job_id}"
        if a.kind == "gone":
            return (f"SLURM job {a.sid} is no longer in the controller (ended and purged after MinJobAge, or "
                    "its state was lost): nothing to cancel; reconcile tells how it ended")
        if a.kind == "ended":
            return f"SLURM job {a.sid} had already ended: nothing to cancel; reconcile tells how it ended"
        kw = {"host": transport.host_name, "exit_status": r.exit_status, "stdout": r.stdout, "stderr": r.stderr}
        if a.kind == "down":
            raise SchedulerUnreachable(f"cannot cancel {job_id}: the SLURM controller does not answer ({a.detail}): "
                                       "nothing was cancelled", **kw)  # type: ignore[arg-type]
        if a.kind == "unknown":
            raise OutcomeUnknown(f"cancel of {job_id}: the SLURM controller did not answer in time ({a.detail}): "
                                 "the cancel may or may not have reached it; reconcile tells", job_id=job_id,
                                 **kw)
        if a.kind == "not_found":
            raise RemoteCommandFailed(f"cannot cancel {job_id}: no SLURM id recorded for it and no job of that "
                                      "name in the queue", **kw)  # type: ignore[arg-type]
        raise RemoteCommandFailed(f"cannot cancel {job_id}: {a.detail}", **kw)  # type: ignore[arg-type]

    async def probe(self, transport: Transport, queries: list[JobQuery], base_dir: str | None, *,
                    timeout: float) -> ProbeResult:
        stdin = "".join(f"{q.job_id} {'F' if q.fence else '-'}\n" for q in queries)
        command = f"sh -c {shlex.quote(PROBE)} probe {base_dir_word(base_dir)}"
        try:
            r = await transport.run(command, stdin=stdin, timeout=timeout)
        except TransportError as exc:
            return ProbeResult(HostState(reachable=False, error=exc.message))
        return parse_probe(r.stdout, queries)

    def merge(self, ev: Evidence, known: Known, *, grace: float) -> Verdict:
        return merge_slurm(ev, known, grace=grace)
