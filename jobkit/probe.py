"""One round trip per host: the evidence for any number of jobs (see ``data/probe.sh``)."""

from __future__ import annotations

import functools
import json
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from jobkit.errors import TransportError
from jobkit.models import Claim, DbEvidence, Evidence, FileEvidence, HostState, Liveness
from jobkit.remote import base_dir_word
from jobkit.transport import Transport

FINAL_OR_RUNNING = {"running", "completed", "failed"}


@functools.cache
def probe_script() -> str:
    return resources.files("jobkit").joinpath("data/probe.sh").read_text()


@functools.cache
def _head(base_word: str) -> str:
    return f"sh -c {shlex.quote(probe_script())} probe {base_word}"


@dataclass(frozen=True)
class JobQuery:
    """A job to ask about, with what the client already knows of its process."""

    job_id: str
    pid: int | None = None
    proc_start: int | None = None
    fence: bool = False  # claim the id if nothing of the job is on the host (it then never starts)
    scheduler_id: str | None = None  # a batch scheduler's id for the job, when recorded


@dataclass
class ProbeResult:
    host: HostState
    evidence: dict[str, Evidence] = field(default_factory=dict)
    all_ids: list[str] = field(default_factory=list)  # every state file on the host
    raw: str = ""


def _db_error_state(text: str) -> str:
    t = text.lower()
    if "locked" in t or "busy" in t:
        return "locked"
    if "not a database" in t or "malformed" in t or "corrupt" in t:
        return "corrupt"
    if "no such table" in t or "no such column" in t:
        return "wrong_schema"
    return "error"


def _int(v: Any) -> int | None:
    return v if type(v) is int else None  # exact type: a bool is no integer here


def _str(v: Any) -> str | None:
    return v if type(v) is str else None


def _digits(s: str) -> bool:
    return s.isascii() and s.isdigit()  # str.isdigit alone takes "²", which int() refuses


def parse(output: str, queries: list[JobQuery]) -> ProbeResult:
    # Sections: a line that starts with "==" opens one ("==name rest"); the text before the first
    # is no section. Split once on "\n==" rather than line by line: 1,000 jobs are ~3,000 lines.
    sections: dict[str, list[str]] = {}
    header: dict[str, str] = {}
    for chunk in ("\n" + output).split("\n==")[1:]:
        head, nl, body = chunk.partition("\n")
        name, _, rest = head.partition(" ")
        header[name] = rest
        lines = sections.setdefault(name, [])
        if nl:
            lines.extend(body.split("\n"))
    if "end" not in header:  # the answer was cut: nothing in it can be trusted
        return ProbeResult(HostState(reachable=False, error="probe output incomplete (connection lost mid-answer?)"),
                           raw=output)
    try:
        now = float(header.get("now", ""))
    except ValueError:
        now = None
    host = HostState(reachable=True, boot_id=header.get("boot") or None, now_epoch=now)

    # database
    db_head = header.get("db", "")
    db_rows: dict[str, dict[str, Any]] = {}
    db_state = "ok"
    if db_head in ("no_sqlite3", "missing"):
        db_state = db_head
    else:
        text = "\n".join(sections.get("db", [])).strip()
        if db_head != "rc=0":
            db_state = _db_error_state(text)
        elif text:
            try:
                rows = json.loads(text)
            except ValueError:
                rows = None
            if type(rows) is list and all(type(row) is dict for row in rows):
                for row in rows:
                    db_rows[str(row.get("id"))] = row
            else:  # not sqlite3's answer to the query (a number, an object, text)
                db_state = "error"

    # state files: lines "F\t<path>\t<content>" grouped by file; "E id" marks existence
    exists: set[str] = set()
    contents: dict[str, list[str]] = {}
    claims: dict[str, str] = {}
    for ln in sections.get("files", []):
        kind = ln[:2]
        if kind == "F\t":
            parts = ln.split("\t", 2)
            if len(parts) != 3:
                continue  # not a line the probe writes: no content of any file
            path, content = parts[1], parts[2]
            jid = path.rsplit("/", 1)[-1].removesuffix(".status")  # a path (older probes) or the id
            if jid in contents:
                contents[jid].append(content)
            else:
                contents[jid] = [content]
        elif kind == "E ":
            exists.add(ln[2:])
        elif kind == "L\t":
            parts = ln.split("\t", 2)
            if len(parts) == 3:
                claims[parts[1]] = parts[2]
    fenced = {ln[2:] for ln in sections.get("fence", []) if ln.startswith("X ")}

    starts: dict[int, int | None] = {}
    for ln in sections.get("procs", []):
        parts = ln.split()
        if len(parts) >= 2 and parts[0] == "S" and _digits(parts[1]):
            if len(parts) > 3 and parts[3] in ("Z", "X"):
                continue  # a zombie is dead, whoever will reap it
            starts[int(parts[1])] = int(parts[2]) if len(parts) > 2 and _digits(parts[2]) else None
    tmux_lines = sections.get("tmux", [])
    tmux_ok = any(ln == "rc=0" for ln in tmux_lines)
    tmux_known = any(ln.startswith("rc=") and ln != "rc=none" for ln in tmux_lines)
    sessions = {ln[2:] for ln in tmux_lines if ln.startswith("T ")}

    result = ProbeResult(host, raw=output)
    result.all_ids = [ln[2:] for ln in sections.get("all", []) if ln.startswith("A ")]
    evidence = result.evidence
    no_db = DbEvidence(db_state) if db_state != "ok" else DbEvidence("no_row")  # one shared (frozen) instance
    lives: dict[tuple[bool | None, bool | None, bool | None], Liveness] = {}
    for q in queries:
        jid = q.job_id
        r = db_rows.get(jid) if db_state == "ok" else None
        if r is not None:
            g = r.get
            db = DbEvidence("ok", _str(g("status")), _int(g("exit_code")), _str(g("signal")),
                            _int(g("started_epoch")), _int(g("completed_epoch")), _str(g("boot_id")),
                            _int(g("pid")), _str(g("token")))
        else:
            db = no_db
        sf = _file_evidence(jid, jid in exists, contents.get(jid))
        pid = sf.pid or db.pid or q.pid
        proc_start = sf.proc_start if sf.proc_start is not None else q.proc_start
        job_alive: bool | None = None
        if pid is not None:
            job_alive = pid in starts and (proc_start is None or starts[pid] == proc_start)
        wrapper_alive: bool | None = None
        if sf.wrapper_pid is not None:  # the same process, not a later one behind a reused pid
            wrapper_alive = sf.wrapper_pid in starts and sf.wrapper_start in (None, starts[sf.wrapper_pid])
        tmux = (jid in sessions) if tmux_known else None
        if tmux_known and not tmux_ok:
            tmux = False  # no tmux server on the socket: no session
        claim = _claim(claims.get(jid), jid in fenced, starts)
        if wrapper_alive is None and claim.pid is not None:
            wrapper_alive = claim.alive
        key = (job_alive, wrapper_alive, tmux)
        live = lives.get(key)
        if live is None:
            live = lives[key] = Liveness(job_alive, wrapper_alive, tmux)
        evidence[jid] = Evidence(jid, host, db, sf, live, claim)
    return result


_FENCED = Claim("fenced")
_ABSENT = Claim("absent")
_OTHER = Claim("other")


def _claim(line: str | None, fenced_now: bool, starts: dict[int, int | None]) -> Claim:
    if fenced_now or (line is not None and line.startswith("jobkit-fence ")):
        return _FENCED
    if line is None:
        return _ABSENT
    m = _CLAIM_RE.match(line)
    if m is None:
        return _OTHER  # created but unwritten (a full disk), or not jobkit's
    pid, start = int(m.group(1)), m.group(2)
    return Claim("wrapper", pid, pid in starts and (start is None or starts[pid] == int(start)))


#: the claim line: its pid, and the wrapper's start time (to tell it from a reused pid)
_CLAIM_RE = re.compile(r"jobkit-wrapper\[(\d+)\] [A-Za-z0-9_-]+: claimed(?: \(start (\d+)\))?")
_MISSING = FileEvidence("missing")


def _file_evidence(job_id: str, exists: bool, lines: list[str] | None) -> FileEvidence:
    if not exists:
        return _MISSING
    raw = "\n".join(lines) if lines else ""
    try:
        data = json.loads(raw)
    except ValueError:
        return FileEvidence("invalid", raw=raw[:500])
    if type(data) is not dict or data.get("id") != job_id:
        return FileEvidence("invalid", raw=raw[:500])
    status = data.get("status")
    if type(status) is not str or status not in FINAL_OR_RUNNING:  # a list is unhashable: no set lookup
        return FileEvidence("invalid", raw=raw[:500])
    g = data.get
    code = _int(g("exit_code"))
    if status != "running" and code is None:
        return FileEvidence("invalid", raw=raw[:500])
    return FileEvidence("ok", status, code, _str(g("signal")), _int(g("pid")), _int(g("wrapper_pid")),
                        _int(g("proc_start")), _str(g("boot_id")), _int(g("started_epoch")),
                        _int(g("completed_epoch")), _str(g("db")), raw=raw[:500],
                        wrapper_start=_int(g("wrapper_start")))


#: what the host accepts as an id (the probe drops anything else, as the wrapper refuses it)
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: queries and SQL up to this size travel in the command line (no awk pass on the host to build
#: them); beyond it, on stdin (no argument-size limit: any number of jobs)
INLINE_LIMIT = 64 * 1024


def probe_command(queries: list[JobQuery], base_dir: str | None = None,
                  inline: bool | None = None) -> tuple[str, str]:
    """The command and its stdin for ``queries``: inline (queries and SQL in the command line)
    when they fit in ``INLINE_LIMIT`` or ``inline`` says so, else on stdin. Both ask the host
    the same thing (``tests/unit/test_probe.py`` compares them on generated hosts)."""
    seen: set[str] = set()
    valid: list[JobQuery] = []
    for q in queries:  # what the host would keep: valid ids, first occurrence
        if q.job_id not in seen and _ID_RE.fullmatch(q.job_id):
            seen.add(q.job_id)
            valid.append(q)
    head = _head(base_dir_word(base_dir))
    lines = [(q.job_id, str(q.pid) if q.pid is not None and q.pid >= 0 else "-",
              str(q.proc_start) if q.proc_start is not None and q.proc_start >= 0 else "-", "F" if q.fence else "-")
             for q in valid]
    qtext = "\n".join(f"Q {i} {p} {s} {f}" for i, p, s, f in lines)
    sql = "SELECT * FROM jobs WHERE id IN (" + ",".join(f"'{i}'" for i, _, _, _ in lines) + ");"
    if inline if inline is not None else len(qtext) + len(sql) <= INLINE_LIMIT:
        return f"{head} {shlex.quote(qtext)} {shlex.quote(sql)}", ""
    return head, "".join(f"{i} {p} {s} {f}\n" for i, p, s, f in lines)


async def probe(transport: Transport, queries: list[JobQuery], base_dir: str | None = None,
                timeout: float = 5.0, *, inline: bool | None = None) -> ProbeResult:
    """Ask the host about every job in ``queries`` with one command; an unreachable or slow host,
    or a connection lost mid-answer, gives ``host.reachable == False`` (never an exception)."""
    command, stdin = probe_command(queries, base_dir, inline)
    try:
        r = await transport.run(command, stdin=stdin, timeout=timeout)
    except TransportError as exc:  # unreachable, slow, lost mid-answer: unavailable, never raised
        return ProbeResult(HostState(reachable=False, error=exc.message))
    return parse(r.stdout, queries)
