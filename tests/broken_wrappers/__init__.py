"""Deliberately broken wrappers: jobkit's wrapper with exactly one known bug each.

Each bug is a small patch applied to the current ``wrapper/job_wrapper.sh`` (so a broken wrapper
differs from the real one by its bug and nothing else, and never drifts from it). Write them out
with ``python -m tests.broken_wrappers DIR``; ``tests/conformance/test_teeth.py`` checks that the
conformance suite fails each one on the clause that names its bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobkit import wrapper_dir


@dataclass(frozen=True)
class Bug:
    name: str
    description: str
    clause: str
    edits: tuple[tuple[str, str], ...]  # (text in the real wrapper, its replacement)
    shebang: str = "#!/bin/sh"


BUGS: tuple[Bug, ...] = (
    Bug("sigterm_completed", "a signalled wrapper records the job completed/0", "W-4",
        (('if [ -n "$sig_name" ]; then\n  status=failed exit_code=$((128 + sig_num))',
          "if [ -n \"$sig_name\" ]; then\n  status=completed exit_code=0 sig_name=''"),)),
    Bug("foreground", "the job runs in the foreground of the wrapper, not in its own process group", "W-3",
        ((") &\njob_pid=$!", ")\njob_pid=$$"),)),
    Bug("no_hup_trap", "SIGHUP is not trapped (tmux kill-session kills the wrapper unrecorded)", "W-5",
        (("trap 'on_signal HUP 1' HUP\n", ""),)),
    Bug("non_atomic", "the state file is rewritten in place (truncate, then write in two steps)", "W-9",
        (("  if { printf '%s\\n' \"$json\" >\"$wtmp\"; } 2>/dev/null &&",
          "  half=${json%%,\\\"started_at\\\"*}\n"
          "  { printf '%s' \"$half\" >\"$state\"; sleep 0.2; printf '%s\\n' \"${json#\"$half\"}\" >>\"$state\"; }"
          " 2>/dev/null\n  return 0\n  if { printf '%s\\n' \"$json\" >\"$wtmp\"; } 2>/dev/null &&"),)),
    Bug("in_place", "the state file is written in place (`printf >file`), not through a temp file and a rename", "W-16",
        (("  if { printf '%s\\n' \"$json\" >\"$wtmp\"; } 2>/dev/null &&",
          "  { printf '%s\\n' \"$json\" >\"$state\"; } 2>/dev/null && return 0\n"
          "  if { printf '%s\\n' \"$json\" >\"$wtmp\"; } 2>/dev/null &&"),)),
    Bug("no_busy_timeout", "sqlite3 runs with no busy timeout and no retries", "W-10",
        (('    out=$(sqlite3 -batch -bail -cmd ".timeout $db_timeout" -cmd "PRAGMA synchronous=NORMAL" \\\n',
          '    db_retries=1\n    out=$(sqlite3 -batch -bail -cmd "PRAGMA synchronous=NORMAL" \\\n'),)),
    Bug("id_in_sql", "the job id is not validated before use (pasted into SQL, JSON and paths)", "W-17",
        (('if [ "$bad_id" = 1 ] || [ "${#job_id}" -gt 64 ]; then', "if false; then"),)),
    Bug("unescaped_json", "JSON strings are written without escaping", "W-18",
        (("json_escape() { # sets `esc` to VALUE",
          "json_escape() { esc=$1; return 0; }\njson_escape_unused() { # sets `esc` to VALUE"),)),
    Bug("lock_inherited", "a flock on a lock file is taken on fd 9 for the job's whole life and inherited by it",
        "W-19",
        (("# The job runs in the background, in its own session and process group, stdin from /dev/null.",
          "exec 9>\"$jobs_dir/.lock\"\nflock 9 2>/dev/null\n"
          "# The job runs in the background, in its own session and process group, stdin from /dev/null."),)),
    Bug("date_iso_only", "timestamps come from `date -I` only (missing on BusyBox/BSD builds)", "W-20",
        (("  n=$(date -u '+%Y-%m-%dT%H:%M:%SZ %s' 2>/dev/null) || return 0\n  now_iso=${n% *} now_epoch=${n#* }",
          "  now_iso=$(date -u -Iseconds 2>/dev/null) || { now_iso='' now_epoch=''; return 0; }\n"
          "  now_epoch=$(date -u +%s)"),)),
    Bug("argv_as_options", "the job's argv follows env's options and setsid's without `--`: a first word FOO=1 is "
        "taken as an assignment, -i or --json as an option", "W-24",
        (('    gnu_env) exec env --default-signal=INT,QUIT -- setsid -- "$@" </dev/null ;;',
          '    gnu_env) exec setsid env --default-signal=INT,QUIT "$@" </dev/null ;;'),
         ('  exec setsid -- "$@" </dev/null\n) &', '  exec setsid "$@" </dev/null\n) &'))),
    Bug("bash_only", "bash-only syntax ([[ ]] and arrays): breaks under a POSIX /bin/sh", "W-21",
        (('if [ "$bad_id" = 1 ] || [ "${#job_id}" -gt 64 ]; then',
          'ids=("$job_id")\nif [[ $bad_id == 1 || ${#ids[0]} -gt 64 ]]; then'),),
        shebang="#!/bin/bash"),
)


@dataclass(frozen=True)
class Deviant:
    """A wrapper that deviates from the protocol itself (not one bug of a conforming wrapper): the
    suite must give a clean verdict (pass, FAIL with a sentence, n/a, error) on every clause."""

    name: str
    description: str
    edits: tuple[tuple[str, str], ...] = ()  # patches of jobkit's wrapper, as for a Bug
    text: str = ""  # or a whole script of its own


ORIGINAL_STYLE = r"""#!/bin/bash
job_id=$1; shift
base=${JOBKIT_BASE_DIR:-$HOME/.jobkit}
state=$base/jobs/$job_id.status
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "{\"id\":\"$job_id\",\"status\":\"running\",\"user\":\"$USER\",\"started_at\":\"$started\"}" >"$state"
sqlite3 "$base/server.db" "UPDATE jobs SET status='running', started_at='$started' WHERE id='$job_id'"
"$@"
rc=$?
if [[ $rc -eq 0 ]]; then st=completed; else st=failed; fi
done_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "{\"id\":\"$job_id\",\"status\":\"$st\",\"exit_code\":$rc,\"user\":\"$USER\",\
\"started_at\":\"$started\",\"completed_at\":\"$done_at\"}" >"$state"
sqlite3 "$base/server.db" "UPDATE jobs SET status='$st', exit_code=$rc, completed_at='$done_at' WHERE id='$job_id'"
exit $rc
"""

_WRITE_STATE = "write_state() { # [running|final|annotate]; writes through the temp file $wtmp"
_STATE_WRITE = "  if { printf '%s\\n' \"$json\" >\"$wtmp\"; } 2>/dev/null &&"
_PRE_JSON = '    pre_json="$head\\"$db_ok\\",\\"db_detail\\":null}"'

DEVIANTS: tuple[Deviant, ...] = (
    Deviant("no_pid", "the state file has no pid, pgid or wrapper_pid field",
            (('\\"pid\\":$t_pid,\\"pgid\\":$t_pid,', ""), ('\\"wrapper_pid\\":$$,', ""))),
    Deviant("no_state_file", "never writes a state file",
            ((_WRITE_STATE, "write_state() { return 0; }\n_unused() {"),)),
    Deviant("empty_state_file", "writes an empty state file",
            ((_WRITE_STATE, 'write_state() { : >"$state"; return 0; }\n_unused() {'),)),
    Deviant("array_state_file", "writes the state as a JSON array holding the object",
            ((_STATE_WRITE, '  json="[$json]"\n' + _STATE_WRITE),
             (_PRE_JSON, _PRE_JSON + '\n    pre_json="[$pre_json]"'))),
    Deviant("db_never_updated", "never updates the server database (and says nothing about it)",
            (("db_update() { # SET-clause [running];", "db_update() { db_state=ok; return 0; }\n_unused() { #"),)),
    Deviant("exits_at_once", "exits 0 at once, doing nothing", text="#!/bin/sh\nexit 0\n"),
    Deviant("hangs", "hangs before doing anything", text="#!/bin/sh\nexec sleep 3600\n"),
    Deviant("bash_no_traps", "a bash wrapper in the style of the original design: no pid field, no traps, the job "
                             "in the foreground, the state file written in place, the id pasted into SQL",
            text=ORIGINAL_STYLE),
)


def deviant_text(d: Deviant) -> str:
    header = f"#!/bin/sh\n# DEVIATES FROM THE PROTOCOL ({d.name}): {d.description}\n"
    if d.text:
        shebang, _, rest = d.text.partition("\n")
        return header.replace("#!/bin/sh", shebang, 1) + rest
    text = (wrapper_dir() / "job_wrapper.sh").read_text()
    for old, new in d.edits:
        if text.count(old) != 1:
            raise ValueError(f"{d.name}: the patch no longer matches the wrapper exactly once: {old[:60]!r}")
        text = text.replace(old, new)
    return header + text.removeprefix("#!/bin/sh\n")


def write_deviant(d: Deviant, directory: Path) -> Path:
    path = directory / f"{d.name}.sh"
    path.write_text(deviant_text(d))
    path.chmod(0o755)
    return path


def broken_text(bug: Bug) -> str:
    text = (wrapper_dir() / "job_wrapper.sh").read_text()
    for old, new in bug.edits:
        if text.count(old) != 1:
            raise ValueError(f"{bug.name}: the patch no longer matches the wrapper exactly once: {old[:60]!r}")
        text = text.replace(old, new)
    header = (f"{bug.shebang}\n# BROKEN ON PURPOSE ({bug.name}): {bug.description}\n"
              f"# The conformance suite must fail this wrapper on {bug.clause}.\n")
    return header + text.removeprefix("#!/bin/sh\n")


def write(bug: Bug, directory: Path) -> Path:
    path = directory / f"{bug.name}.sh"
    path.write_text(broken_text(bug))
    path.chmod(0o755)
    return path

