"""The probe: its parser on crafted answers, and the real probe.sh (this machine's sh, awk,
sqlite3) over generated hosts, compared with what was put there."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobkit import wrapper_dir
from jobkit.errors import ConnectionLost, RemoteTimeout
from jobkit.probe import JobQuery, parse, probe, probe_command
from jobkit.transport import CommandResult
from jobkit.transport_local import LocalTransport

pytestmark = pytest.mark.unit

HEAD = "==boot b-1\n==now 1000\n"


def answer(db: str = "==db rc=0\n[]", files: str = "", procs: str = "", tmux: str = "rc=1", fence: str = "",
           all_: str = "") -> str:
    return (f"{HEAD}{db}\n==files\n{files}\n==procs\n{procs}\n==tmux\n{tmux}\n==fence\n{fence}\n==all\n{all_}\n"
            "==end\n")


def test_a_cut_answer_is_unavailable_never_a_guess() -> None:
    full = answer()
    for cut in (0, 10, len(full) // 2, len(full) - 7):
        r = parse(full[:cut], [JobQuery("j")])
        assert not r.host.reachable
        assert r.evidence == {}
    assert parse(full, [JobQuery("j")]).host.reachable


@pytest.mark.parametrize(("text", "state"), [
    ("Error: database is locked", "locked"), ("Error: file is not a database", "corrupt"),
    ("Parse error: no such table: jobs", "wrong_schema"), ("Error: disk I/O error", "error"),
])
def test_database_errors_are_told_apart(text: str, state: str) -> None:
    r = parse(answer(db=f"==db rc=1\n{text}"), [JobQuery("j")])
    assert r.evidence["j"].db is not None
    assert r.evidence["j"].db.state == state


@pytest.mark.parametrize("head", ["no_sqlite3", "missing"])
def test_no_database_is_said_as_such(head: str) -> None:
    r = parse(answer(db=f"==db {head}"), [JobQuery("j")])
    assert r.evidence["j"].db is not None
    assert r.evidence["j"].db.state == head


def test_rows_files_claims_liveness_and_fence() -> None:
    row = {"id": "a", "status": "running", "pid": 41, "token": "t1", "boot_id": "b-1", "started_epoch": 990}
    state = {"id": "a", "status": "running", "exit_code": None, "pid": 41, "wrapper_pid": 40, "proc_start": 7,
             "boot_id": "b-1", "started_epoch": 990}
    out = answer(db="==db rc=0\n" + json.dumps([row]),
                 files=f"E a\nF\t/b/jobs/a.status\t{json.dumps(state)}\nL\ta\tjobkit-wrapper[40] a: claimed\n"
                       "L\tc\tjobkit-fence 999: never started\nL\td\t\nP 41\nP 40",
                 procs="S 41 7 S\nS 40 3 S", tmux="T a\nrc=0", fence="X b", all_="A a\nA z")
    r = parse(out, [JobQuery("a"), JobQuery("b", fence=True), JobQuery("c"), JobQuery("d"), JobQuery("e", 55, 9)])
    a = r.evidence["a"]
    assert (a.db.status, a.db.token, a.file.status, a.file.wrapper_pid) == ("running", "t1", "running", 40)  # type: ignore[union-attr]
    assert (a.live.job_alive, a.live.wrapper_alive, a.live.tmux_session) == (True, True, True)
    assert a.claim is not None
    assert (a.claim.state, a.claim.pid, a.claim.alive) == ("wrapper", 40, True)
    assert r.evidence["b"].claim.state == "fenced"  # type: ignore[union-attr]
    assert r.evidence["c"].claim.state == "fenced"  # type: ignore[union-attr]
    assert r.evidence["d"].claim.state == "other"  # type: ignore[union-attr]
    e = r.evidence["e"]
    assert (e.db.state, e.file.state, e.claim.state, e.live.job_alive, e.live.tmux_session) == (  # type: ignore[union-attr]
        "no_row", "missing", "absent", False, False)
    assert r.all_ids == ["a", "z"]


def test_a_pid_behind_another_start_time_or_a_zombie_is_not_alive() -> None:
    state = {"id": "a", "status": "running", "exit_code": None, "pid": 41, "proc_start": 7}
    files = f"E a\nF\t/b/jobs/a.status\t{json.dumps(state)}"
    assert parse(answer(files=files, procs="S 41 8 S"), [JobQuery("a")]).evidence["a"].live.job_alive is False
    assert parse(answer(files=files, procs="S 41 7 Z"), [JobQuery("a")]).evidence["a"].live.job_alive is False
    assert parse(answer(files=files, procs="S 41 7 R"), [JobQuery("a")]).evidence["a"].live.job_alive is True


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '{"id": "other", "status": "running"}',
                                     '{"id": "a", "status": "completed"}', '{"id": "a", "status": "weird"}',
                                     '{"id": "a", "status": "failed", "exit_code": "3"}'])
def test_a_state_file_that_is_not_a_protocol_state_is_invalid(content: str) -> None:
    r = parse(answer(files=f"E a\nF\t/b/jobs/a.status\t{content}"), [JobQuery("a")])
    assert r.evidence["a"].file is not None
    assert r.evidence["a"].file.state == "invalid"


_STATE_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.text(max_size=8),
                         st.sampled_from(["running", "completed", "failed"]), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_STATE_FILES = st.fixed_dictionaries({"id": st.sampled_from(["a", "b", 7, None]), "status": _STATE_VALUES},
                                     optional={"exit_code": _STATE_VALUES, "pid": _STATE_VALUES,
                                               "wrapper_pid": _STATE_VALUES, "signal": _STATE_VALUES})
_ANSWER_LINES = st.one_of(
    st.sampled_from(["==db rc=0", "==db rc=1", "==db missing", "==files", "==procs", "==tmux", "==fence", "==all",
                     "==now 12", "==now x", "==boot", "rc=0", "rc=1", "T a", "X b", "A a", "E a", "E b", "L\ta",
                     "L\ta\tjobkit-wrapper[41] a: claimed (start 7)", "L\tb\tjobkit-fence 9: never started"]),
    st.builds(lambda j, sep: f"F{sep}{j}", st.sampled_from(["a", "b", "/x/jobs/a.status"]),
              st.sampled_from(["", "\t"])),
    st.builds(lambda j, c: f"F\t{j}\t{c}", st.sampled_from(["a", "b"]), st.one_of(_STATE_FILES.map(json.dumps),
                                                                                  st.text(max_size=20))),
    st.builds(lambda *p: " ".join(p), st.just("S"), st.sampled_from(["41", "40", "x", "-1", ""]),
              st.sampled_from(["7", "", "z"]), st.sampled_from(["S", "Z", ""])),
    st.one_of(st.lists(st.one_of(_STATE_FILES, st.integers(), st.text(max_size=3)), max_size=3), st.integers(),
              st.text(max_size=5), _STATE_FILES).map(json.dumps),
    st.text(max_size=30))


_SECTIONS = st.sampled_from(["==boot b", "==now 12", "==db rc=0", "==db rc=1", "==db missing", "==files", "==procs",
                             "==tmux", "==fence", "==all", "==other"])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_SECTIONS, st.lists(_ANSWER_LINES, max_size=6)), max_size=10), st.booleans())
def test_any_answer_gives_evidence_or_unavailable_never_an_exception(sections: list[tuple[str, list[str]]],
                                                                       ended: bool) -> None:
    """Whatever came back (a foreign wrapper's files, a damaged database, garbage), parsing it
    gives every job its evidence with known states, or the host unavailable: never a raise."""
    text = "".join(f"{head}\n" + "".join(f"{ln}\n" for ln in lines) for head, lines in sections)
    r = parse(text + ("==end\n" if ended else ""), [JobQuery("a"), JobQuery("b", 41, 7)])
    if not r.host.reachable:
        assert not r.evidence
        return
    assert set(r.evidence) == {"a", "b"}
    for ev in r.evidence.values():
        assert ev.db is not None
        assert ev.file is not None
        assert ev.claim is not None
        assert ev.db.state in {"ok", "no_row", "missing", "locked", "corrupt", "wrong_schema", "no_sqlite3", "error"}
        assert ev.file.state in {"ok", "missing", "invalid"}
        assert ev.file.state != "ok" or (ev.file.status in {"running", "completed", "failed"}
                                         and (ev.file.status == "running" or type(ev.file.exit_code) is int))
        assert ev.claim.state in {"absent", "wrapper", "fenced", "other"}


class Failing:
    host_name = "h"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def run(self, command: str, **kw: object) -> CommandResult:
        raise self.exc

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("exc", [RemoteTimeout("slow", sent=True), ConnectionLost("gone")])
async def test_a_transport_failure_is_unavailable_never_raised(exc: Exception) -> None:
    r = await probe(Failing(exc), [JobQuery("a")])  # type: ignore[arg-type]
    assert not r.host.reachable


# --- the real probe.sh over generated hosts ---------------------------------------------------------
ids = st.from_regex(r"[a-z][a-z0-9_-]{0,11}", fullmatch=True)
row_statuses = st.sampled_from(["queued", "running", "completed", "failed"])
jobs = st.dictionaries(ids, st.fixed_dictionaries({
    "row": st.one_of(st.none(), st.tuples(row_statuses, st.one_of(st.none(), st.integers(0, 255)),
                                          st.sampled_from([None, "tok-a"]))),
    "file": st.sampled_from([None, "running", "completed", "garbage"]),
    "claim": st.sampled_from([None, "wrapper", "fence", "empty"]),
    "fence": st.booleans(),
}), max_size=6)


def _host(base: Path, spec: dict[str, dict[str, object]]) -> None:
    (base / "jobs").mkdir(parents=True)
    db = sqlite3.connect(base / "server.db")
    db.executescript((wrapper_dir() / "server_schema.sql").read_text())
    for job, s in spec.items():
        if s["row"] is not None:
            status, code, token = s["row"]  # type: ignore[misc]
            db.execute("INSERT INTO jobs (id, status, exit_code, token) VALUES (?, ?, ?, ?)",
                       (job, status, code, token))
        if s["file"] == "garbage":
            (base / "jobs" / f"{job}.status").write_text("not json {\n")
        elif s["file"] is not None:
            code = 0 if s["file"] == "completed" else None
            (base / "jobs" / f"{job}.status").write_text(json.dumps(
                {"id": job, "status": s["file"], "exit_code": code, "pid": 2 ** 22 + 7, "wrapper_pid": os.getpid()}))
        claim = {"wrapper": f"jobkit-wrapper[{os.getpid()}] {job}: claimed\n", "fence": "jobkit-fence 1: x\n",
                 "empty": ""}.get(str(s["claim"]))
        if claim is not None:
            (base / "jobs" / f"{job}.wrapper.log").write_text(claim)
    db.commit()
    db.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs)
def test_the_real_probe_reports_what_is_on_the_host(spec: dict[str, dict[str, object]]) -> None:
    with tempfile.TemporaryDirectory(prefix="jobkit-probe-") as d:
        base = Path(d) / "base"
        _host(base, spec)
        queries = [JobQuery(j, fence=bool(s["fence"])) for j, s in spec.items()]
        r = asyncio.run(probe(LocalTransport(), queries, str(base)))
        assert r.host.reachable, r.raw[-500:]
        assert r.host.now_epoch is not None
        assert abs(r.host.now_epoch - time.time()) < 30  # the host's clock in seconds, nothing else
        assert sorted(r.all_ids) == sorted(j for j, s in spec.items() if s["file"] is not None)
        for job, s in spec.items():
            ev = r.evidence[job]
            assert ev.db is not None
            assert ev.file is not None
            assert ev.claim is not None
            if s["row"] is None:
                assert ev.db.state == "no_row"
            else:
                assert (ev.db.state, ev.db.status, ev.db.exit_code, ev.db.token) == ("ok", *s["row"])  # type: ignore[misc]
            want_file = {None: "missing", "garbage": "invalid"}.get(s["file"], "ok")  # type: ignore[arg-type]
            assert ev.file.state == want_file
            fenced_now = s["fence"] and s["file"] is None and s["claim"] is None
            want_claim = {"wrapper": "wrapper", "fence": "fenced", "empty": "other"}.get(
                str(s["claim"]), "fenced" if fenced_now else "absent")
            assert ev.claim.state == want_claim, (job, s)
            log = base / "jobs" / f"{job}.wrapper.log"
            assert log.exists() == (s["claim"] is not None or fenced_now)
            if s["file"] not in (None, "garbage"):
                assert ev.live.job_alive is False  # that pid is not running here
                assert ev.live.wrapper_alive is True  # this test's own pid


def test_the_probe_script_is_posix_sh() -> None:
    script = Path(__file__).resolve().parents[2] / "jobkit" / "data" / "probe.sh"
    r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_every_field_of_a_row_and_a_state_file_reaches_the_evidence() -> None:
    row = {"id": "a", "status": "failed", "exit_code": 3, "signal": "TERM", "started_epoch": 10,
           "completed_epoch": 20, "boot_id": "b-1", "pid": 41, "token": "t"}
    state = {"id": "a", "status": "failed", "exit_code": 3, "signal": "TERM", "pid": 41, "wrapper_pid": 40,
             "proc_start": 7, "boot_id": "b-1", "started_epoch": 10, "completed_epoch": 20, "db": "ok"}
    r = parse(answer(db="==db rc=0\n" + json.dumps([row]),
                     files=f"E a\nF\t/b/jobs/a.status\t{json.dumps(state)}"), [JobQuery("a")])
    db, f = r.evidence["a"].db, r.evidence["a"].file
    assert db is not None
    assert f is not None
    assert (db.state, db.status, db.exit_code, db.signal, db.started_epoch, db.completed_epoch, db.boot_id, db.pid,
            db.token) == ("ok", "failed", 3, "TERM", 10, 20, "b-1", 41, "t")
    assert (f.state, f.status, f.exit_code, f.signal, f.pid, f.wrapper_pid, f.proc_start, f.boot_id,
            f.started_epoch, f.completed_epoch, f.db) == ("ok", "failed", 3, "TERM", 41, 40, 7, "b-1", 10, 20, "ok")
    assert f.raw == json.dumps(state)
    assert (r.host.boot_id, r.host.now_epoch) == ("b-1", 1000.0)
    # wrong types are no information, never a value
    odd = dict(state, pid="41", exit_code=True, signal=5, boot_id=None)
    f2 = parse(answer(files=f"E a\nF\t/b/jobs/a.status\t{json.dumps(odd)}"), [JobQuery("a")]).evidence["a"].file
    assert f2 is not None
    assert f2.state == "invalid"  # a final state needs an integer exit code
    running = dict(state, status="running", exit_code=None, pid="41", signal=5)
    f3 = parse(answer(files=f"E a\nF\t/b/jobs/a.status\t{json.dumps(running)}"), [JobQuery("a")]).evidence["a"].file
    assert f3 is not None
    assert (f3.state, f3.pid, f3.signal, f3.exit_code) == ("ok", None, None, None)


def test_the_client_knows_of_the_process_when_the_host_forgot() -> None:
    # neither row nor state file: the pid and start time the store learned decide liveness
    r = parse(answer(procs="S 55 9 S"), [JobQuery("a", 55, 9), JobQuery("b", 55, 8), JobQuery("c")])
    assert [r.evidence[j].live.job_alive for j in "abc"] == [True, False, None]
    assert parse(answer(tmux="rc=none"), [JobQuery("a")]).evidence["a"].live.tmux_session is None
    assert parse(answer(tmux="rc=1"), [JobQuery("a")]).evidence["a"].live.tmux_session is False
    assert parse(answer(db="==db rc=0\nnot json"), [JobQuery("a")]).evidence["a"].db.state == "error"  # type: ignore[union-attr]
    assert parse("==boot \n==now x\n==end\n", [JobQuery("a")]).host.now_epoch is None


def test_a_claim_names_its_wrapper_by_pid_and_start_time() -> None:
    def alive(line: str, procs: str) -> bool | None:
        ev = parse(answer(files=f"L\ta\t{line}", procs=procs), [JobQuery("a")]).evidence["a"]
        assert ev.claim is not None
        assert ev.claim.state == "wrapper"
        assert ev.live.wrapper_alive is ev.claim.alive  # no state file: the claim tells
        return ev.claim.alive

    assert alive("jobkit-wrapper[40] a: claimed (start 3)", "S 40 3 S") is True
    assert alive("jobkit-wrapper[40] a: claimed (start 3)", "S 40 4 S") is False  # a later process, same pid
    assert alive("jobkit-wrapper[40] a: claimed (start 3)", "") is False
    assert alive("jobkit-wrapper[40] a: claimed", "S 40 9 S") is True  # an older wrapper: no start recorded


# --- both ways of asking (inline, stdin) and the previous probe give the same evidence ---------------
REFERENCE = Path(__file__).resolve().parent / "probe_reference.sh"
pid_kinds = st.sampled_from(["none", "mine", "gone", "reused"])  # reused: a live pid, another start time
richer = st.dictionaries(ids, st.fixed_dictionaries({
    "row": st.one_of(st.none(), st.tuples(row_statuses, st.one_of(st.none(), st.integers(0, 255)),
                                          st.sampled_from([None, "tok-a"]), pid_kinds)),
    "file": st.sampled_from([None, "running", "completed", "garbage", "empty", "two-lines"]),
    "file_pid": pid_kinds,
    "claim": st.sampled_from([None, "wrapper", "wrapper-gone", "fence", "empty"]),
    "fence": st.booleans(),
    "client_pid": pid_kinds,
    "session": st.booleans(),
}), max_size=6)


def _pid(kind: object) -> int | None:
    return {"mine": os.getpid(), "gone": 2 ** 22 + 7, "reused": 1}.get(str(kind))


def _start_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])


def _rich_host(base: Path, spec: dict[str, dict[str, object]]) -> None:
    (base / "jobs").mkdir(parents=True)
    db = sqlite3.connect(base / "server.db")
    db.executescript((wrapper_dir() / "server_schema.sql").read_text())
    for job, s in spec.items():
        if s["row"] is not None:
            status, code, token, pk = s["row"]  # type: ignore[misc]
            db.execute("INSERT INTO jobs (id, status, exit_code, token, pid) VALUES (?, ?, ?, ?, ?)",
                       (job, status, code, token, _pid(pk)))
        path = base / "jobs" / f"{job}.status"
        state = {"id": job, "status": s["file"], "exit_code": 0 if s["file"] == "completed" else None,
                 "pid": _pid(s["file_pid"]), "proc_start": 1 if s["file_pid"] == "reused" else None,
                 "wrapper_pid": os.getpid(), "wrapper_start": _start_of(os.getpid())}
        if s["file"] == "garbage":
            path.write_text("not json {\n")
        elif s["file"] == "empty":
            path.write_text("")
        elif s["file"] == "two-lines":
            path.write_text(json.dumps(dict(state, status="running"), indent=1))
        elif s["file"] is not None:
            path.write_text(json.dumps(state))
        claim = {"wrapper": f"jobkit-wrapper[{os.getpid()}] {job}: claimed (start {_start_of(os.getpid())})\n",
                 "wrapper-gone": f"jobkit-wrapper[{2 ** 22 + 9}] {job}: claimed\n",
                 "fence": "jobkit-fence 1: x\n", "empty": ""}.get(str(s["claim"]))
        if claim is not None:
            (base / "jobs" / f"{job}.wrapper.log").write_text(claim)
    db.commit()
    db.close()
    sessions = [j for j, s in spec.items() if s["session"]]
    if sessions:
        sock = str(base / "tmux.sock")
        for name in sessions:
            subprocess.run(["tmux", "-S", sock, "new-session", "-d", "-s", name, "sleep 60"], check=True)


def _kill_tmux(base: Path) -> None:
    if (base / "tmux.sock").exists():
        subprocess.run(["tmux", "-S", str(base / "tmux.sock"), "kill-server"], check=False, capture_output=True)


def _reference(base: Path, queries: list[JobQuery]) -> str:
    stdin = "".join(f"{q.job_id} {q.pid or '-'} {q.proc_start or '-'} {'F' if q.fence else '-'}\n" for q in queries)
    r = subprocess.run(["sh", "-c", REFERENCE.read_text(), "probe", str(base)], input=stdin, capture_output=True,
                       text=True, check=True, timeout=30)
    return r.stdout


def _same_clock(output: str) -> str:
    return "\n".join("==now 1" if ln.startswith("==now ") else ln for ln in output.split("\n"))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(richer)
def test_inline_stdin_and_the_reference_probe_give_the_same_evidence(spec: dict[str, dict[str, object]]) -> None:
    """The small-N way (queries and SQL in the command line), the any-N way (stdin) and the
    previous probe see the same host the same way: rows, state files, claims, liveness (this
    process, a gone pid, a live pid behind another start time), tmux sessions, fences."""
    queries = [JobQuery(j, _pid(s["client_pid"]), 1 if s["client_pid"] == "reused" else None, bool(s["fence"]))
               for j, s in spec.items()]
    with tempfile.TemporaryDirectory(prefix="jobkit-probe-") as d:
        bases = {k: Path(d) / k for k in ("inline", "stdin", "reference")}
        outputs: dict[str, str] = {}
        try:
            for k, base in bases.items():
                _rich_host(base, spec)
                if k == "reference":
                    outputs[k] = _reference(base, queries)
                else:
                    outputs[k] = asyncio.run(probe(LocalTransport(), queries, str(base), inline=k == "inline")).raw
        finally:
            for base in bases.values():
                _kill_tmux(base)
        results = {k: parse(_same_clock(o), queries) for k, o in outputs.items()}
        ref = results["reference"]
        assert ref.host.reachable, outputs["reference"][-500:]
        for k in ("inline", "stdin"):
            assert results[k].host == ref.host, k
            assert results[k].all_ids == ref.all_ids, k
            assert results[k].evidence == ref.evidence, (k, outputs[k][-2000:], outputs["reference"][-2000:])
        fenced = {k: sorted(p.name for p in (b / "jobs").glob("*.wrapper.log")) for k, b in bases.items()}
        assert fenced["inline"] == fenced["stdin"] == fenced["reference"]


def test_the_command_line_way_is_kept_for_what_fits_in_it() -> None:
    small, stdin = probe_command([JobQuery("a")])
    assert small.endswith(" 'Q a - - -' " + shlex.quote("SELECT * FROM jobs WHERE id IN ('a');"))
    assert stdin == ""
    big, stdin = probe_command([JobQuery(f"job-{i:06d}") for i in range(6000)])
    assert "job-000000" not in big
    assert stdin.count("\n") == 6000
    # invalid ids and repeats are dropped on both ways, as the host drops them
    for inline in (True, False):
        command, stdin = probe_command([JobQuery("a"), JobQuery("a b"), JobQuery("a"), JobQuery("x" * 65)],
                                       inline=inline)
        assert "a b" not in command + stdin
        assert "x" * 65 not in command + stdin
        assert (command + stdin).count("Q a ") + stdin.count("a - - -") == 1
