"""The tmux backend: each job is the wrapper in a detached tmux session on an SSH host.

The session runs on a dedicated tmux socket (``<base>/tmux.sock``), is named after the full job
id and is always targeted as ``=<id>`` (exact match: ``-t job1`` would also find ``job10``). The
command reaches the wrapper as an exact argv: every element is shell-quoted for the remote sh,
and tmux gets it as one shell-command string (see :func:`_start`). Evidence comes from one probe
per host (``jobkit/data/probe.sh``), verdicts from :func:`jobkit.merge.merge`.

A submit runs three remote steps, one round trip each (:class:`TmuxBackend` ``prepare``,
``register``, ``start``), every one idempotent for its submission (the token): a retried step
never does its work twice. Their exit status says what happened (``LAUNCH_*``): 0 done (stdout
``already registered`` / ``already launched`` when this very submission had done it before); 67
the id is used on the host by someone else (a row with another token, or a claim or state file
without a row: checked before anything is written); 68 nothing was done (no database, no row
could be inserted, or the working directory is missing); 69 the job can never start: tmux failed
and the id was fenced (claimed the way the wrapper claims it, so a session that tmux did start can
never run the job) and the row removed, or the id was fenced already; anything else leaves the
outcome unknown.
"""

from __future__ import annotations

import shlex

from jobkit.backends.base import FenceOutcome, LaunchOutcome, LaunchRequest, LaunchState
from jobkit.errors import JobkitError, RemoteCommandFailed
from jobkit.ids import validate_id
from jobkit.merge import merge
from jobkit.models import Evidence, Known, Verdict
from jobkit.probe import JobQuery, ProbeResult, probe
from jobkit.remote import base_dir_word
from jobkit.transport import CommandResult, Transport


def tmux_new_session(session: str, line_word: str, options: str = "") -> str:
    """Shell (with ``$b`` the base directory) that starts a detached session ``session`` on the
    dedicated socket ``$b/tmux.sock``, running ``line_word`` (one shell word: the job's command
    line) with ``/bin/sh -c``. The server stays up with no session (exit-empty off): otherwise a
    job that ends at once takes the server down under new-session, which then reports a failure
    for a job that did run."""
    return (f"tmux -S \"$b/tmux.sock\" start-server \\; set-option -g exit-empty off \\; "
            f"set-option -g default-shell /bin/sh && "
            f"tmux -S \"$b/tmux.sock\" new-session -d -s {session}{options} {line_word}")


#: Exit codes of the launch command: each proves what happened on the host.
LAUNCH_ID_USED = 67  # the id is used there (row, state file or claim): nothing was done
LAUNCH_NO_ROW = 68  # the server row could not be inserted: nothing was done
LAUNCH_NO_SESSION = 69  # tmux failed and the id is now fenced: the job can never start


def _head(job_id: str, base_dir: str | None, token: str | None, cwd: str | None = None) -> list[str]:
    validate_id(job_id)
    if token is None or not token.isalnum():
        raise JobkitError("a launch needs an alphanumeric token (the submission's)")
    return [
        f"b={base_dir_word(base_dir)}; id={job_id}; tok={token}" + (f"; cwd={base_dir_word(cwd)}" if cwd else ""),
        "sql() { sqlite3 -batch -bail -cmd '.timeout 5000' \"$b/server.db\" \"$@\"; }",
        "claimed() { [ -e \"$b/jobs/$id.wrapper.log\" ] || [ -e \"$b/jobs/$id.status\" ]; }",
        "fenced() { c=; { read -r c <\"$b/jobs/$id.wrapper.log\"; } 2>/dev/null; "
        "case $c in 'jobkit-fence '*) return 0 ;; esac; return 1; }",
        f"used() {{ echo \"jobkit: job id $id already used on this host\" >&2; exit {LAUNCH_ID_USED}; }}",
        "unrow() { sql \"DELETE FROM jobs WHERE id = '$id' AND token = '$tok' AND status = 'queued'\" "
        ">/dev/null 2>&1; }",
    ]


def _prepare(cwd: str | None) -> list[str]:
    """The host can take the job: its directories, its database, the working directory."""
    return [
        f"mkdir -p \"$b/jobs\" || {{ echo \"jobkit: cannot create $b/jobs\" >&2; exit {LAUNCH_NO_ROW}; }}",
        # sqlite3 would create an empty database where there is none (and the wrapper would then
        # find a database without its table): refuse instead
        f"[ -f \"$b/server.db\" ] || {{ echo \"jobkit: no $b/server.db on this host (deploy first)\" >&2; "
        f"exit {LAUNCH_NO_ROW}; }}",
        *([f"[ -d \"$cwd\" ] || {{ unrow; echo \"jobkit: no directory $cwd on this host\" >&2; "
            f"exit {LAUNCH_NO_ROW}; }}"] if cwd else []),
    ]


def _register() -> list[str]:
    """The row, with the submission's token; a row of this token already there is fine."""
    return [
        "have=$(sql \"SELECT coalesce(token, '-') FROM jobs WHERE id = '$id'\" 2>&1) || "
        f"{{ printf 'jobkit: cannot read the server database: %s\\n' \"$have\" >&2; exit {LAUNCH_NO_ROW}; }}",
        "if [ -n \"$have\" ]; then",
        "  [ \"$have\" = \"$tok\" ] || used",
        "  echo 'already registered'",
        "else",
        "  claimed && used",
        "  out=$(sql \"INSERT INTO jobs (id, status, token) VALUES ('$id', 'queued', '$tok');\" 2>&1) || {",
        "    case $out in *UNIQUE*) used ;; esac",
        f"    printf 'jobkit: cannot insert the row: %s\\n' \"$out\" >&2; exit {LAUNCH_NO_ROW}; }}",
        "fi",
    ]


def _start(job_id: str, argv: list[str], env: dict[str, str] | None, cwd: str | None) -> list[str]:
    """The session, unless this submission started it before (then ``already launched``) or the
    id is fenced (then it never will: exit 69).

    tmux gets the job as ONE shell-command string run by ``/bin/sh -c`` (set as the server's
    default-shell): given several arguments, tmux would split them at any argument that is, or
    ends with, ``;`` (its command separator), so a job argument ``;`` could inject tmux commands.
    The string never ends with ``;``: every element is shell-quoted."""
    if not argv:
        raise JobkitError("empty command")
    extra = "".join(" " + shlex.join([f"{k}={v}"]) for k, v in (env or {}).items())
    static = shlex.join([job_id, *argv])
    start_dir = " -c \"$cwd\"" if cwd else ""
    line = (f"\"exec env JOBKIT_BASE_DIR='$qb' JOBKIT_OUTPUT=files{extra} '$qb/bin/job_wrapper.sh' \""
            + shlex.quote(static))
    return [
        f"if fenced; then echo \"jobkit: the id $id is fenced on this host: the job never starts\" >&2; "
        f"exit {LAUNCH_NO_SESSION}; fi",
        "if claimed || tmux -S \"$b/tmux.sock\" has-session -t \"=$id\" 2>/dev/null; then",
        "  echo 'already launched'; exit 0",
        "fi",
        r"""qb=$(printf '%s' "$b" | sed "s/'/'\\''/g")""",
        "if ! out=$(" + tmux_new_session(job_id, line, start_dir) + " 2>&1); then",
        "  # tmux may have started the session before failing: whoever claims the id first decides",
        "  if (set -C; printf 'jobkit-fence %s: launch failed\\n' \"$(date +%s)\" >\"$b/jobs/$id.wrapper.log\") "
        "2>/dev/null; then",
        f"    unrow; printf 'jobkit: tmux could not start the session: %s\\n' \"$out\" >&2; exit {LAUNCH_NO_SESSION}",
        "  elif [ ! -e \"$b/jobs/$id.wrapper.log\" ]; then",
        "    printf 'jobkit: tmux failed and the id could not be fenced: %s\\n' \"$out\" >&2; exit 70",
        "  fi",
        "fi",
    ]


def _outcome(r: CommandResult, already: str = "already launched") -> LaunchOutcome:
    why = (r.stderr.strip().splitlines() or [""])[-1]
    if r.exit_status == 0:
        return LaunchOutcome(LaunchState.ALREADY if already in r.stdout else LaunchState.LAUNCHED)
    if r.exit_status == LAUNCH_ID_USED:
        return LaunchOutcome(LaunchState.ID_USED, why)
    if r.exit_status in (LAUNCH_NO_ROW, LAUNCH_NO_SESSION):
        return LaunchOutcome(LaunchState.FAILED, why or "launch failed")
    return LaunchOutcome(LaunchState.UNKNOWN, f"the launch ended with exit {r.exit_status}: {why}")


async def cancel(transport: Transport, job_id: str, base_dir: str | None = None, timeout: float = 5.0) -> str:
    """Signal the wrapper (TERM, which it forwards to the job's group); before the wrapper has
    written its state, kill the tmux session instead. Returns what was done."""
    validate_id(job_id)
    b = base_dir_word(base_dir)
    script = (
        f"b={b}; f=\"$b/jobs/{job_id}.status\"; "
        "w=$(sed -n 's/.*\"wrapper_pid\":\\([0-9][0-9]*\\).*/\\1/p' \"$f\" 2>/dev/null); "
        "ws=$(sed -n 's/.*\"wrapper_start\":\\([0-9][0-9]*\\).*/\\1/p' \"$f\" 2>/dev/null); "
        "s=$(sed -n 's/.*\"status\":\"\\([a-z]*\\)\".*/\\1/p' \"$f\" 2>/dev/null); "
        # a pid is only signalled while it is still that wrapper (its start time matches): pids
        # are reused, and a cancel must never hit a stranger's process
        "if [ -n \"$w\" ] && [ -n \"$ws\" ]; then l=; { read -r l </proc/$w/stat; } 2>/dev/null; "
        "set -f; set -- ${l##*') '}; set +f; [ \"$#\" -ge 20 ] && shift 19 && [ \"$1\" = \"$ws\" ] || w=; fi; "
        "if [ \"$s\" = completed ] || [ \"$s\" = failed ]; then echo already-$s; "
        "elif [ -n \"$w\" ] && kill -s TERM \"$w\" 2>/dev/null; then echo signalled-wrapper; "
        f"elif tmux -S \"$b/tmux.sock\" kill-session -t ={job_id} 2>/dev/null; then echo killed-session; "
        "else echo not-found; exit 3; fi"
    )
    r = await transport.run(script, timeout=timeout)
    if r.exit_status != 0:
        raise RemoteCommandFailed(f"job {job_id} not found on the host", host=transport.host_name,
                                  exit_status=r.exit_status, stdout=r.stdout, stderr=r.stderr)
    return r.stdout.strip()


async def list_sessions(transport: Transport, base_dir: str | None = None, timeout: float = 5.0) -> list[str]:
    b = base_dir_word(base_dir)
    r = await transport.run(f"tmux -S {b}/tmux.sock list-sessions -F '#{{session_name}}' 2>/dev/null || true",
                            timeout=timeout)
    return [s for s in r.stdout.split() if s]


class TmuxBackend:
    """Jobs in detached tmux sessions, through jobkit's wrapper."""

    name = "tmux"

    async def prepare(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> LaunchOutcome:
        script = [*_head(req.job_id, req.base_dir, req.token, req.cwd), *_prepare(req.cwd)]
        return _outcome(await transport.run("\n".join(script), timeout=timeout), "-")

    async def register(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> LaunchOutcome:
        script = [*_head(req.job_id, req.base_dir, req.token, req.cwd), *_register()]
        return _outcome(await transport.run("\n".join(script), timeout=timeout), "already registered")

    async def start(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> LaunchOutcome:
        script = [*_head(req.job_id, req.base_dir, req.token, req.cwd), *_start(req.job_id, req.argv, req.env,
                                                                                 req.cwd)]
        return _outcome(await transport.run("\n".join(script), timeout=timeout))

    async def fence(self, transport: Transport, job_id: str, base_dir: str | None, *,
                    timeout: float) -> FenceOutcome:
        validate_id(job_id)
        r = await transport.run(
            f"b={base_dir_word(base_dir)}; l=\"$b/jobs/{job_id}.wrapper.log\"; mkdir -p \"$b/jobs\"; "
            "if (set -C; printf 'jobkit-fence %s: never started\\n' \"$(date +%s)\" >\"$l\") 2>/dev/null; then "
            "echo fenced; else c=; { read -r c <\"$l\"; } 2>/dev/null; case $c in 'jobkit-fence '*) echo fenced;; "
            "*) if [ -e \"$l\" ]; then echo started; else echo 'cannot write the claim' >&2; exit 70; fi;; "
            "esac; fi", timeout=timeout)
        if r.exit_status != 0 or r.stdout.strip() not in ("fenced", "started"):
            raise RemoteCommandFailed(f"cannot fence {job_id}", host=transport.host_name, exit_status=r.exit_status,
                                      stdout=r.stdout, stderr=r.stderr)
        return FenceOutcome(r.stdout.strip())

    async def unregister(self, transport: Transport, req: LaunchRequest, *, timeout: float) -> None:
        script = [*_head(req.job_id, req.base_dir, req.token), "[ ! -f \"$b/server.db\" ] || unrow"]
        await transport.run("\n".join(script), timeout=timeout, check=True)

    async def cancel(self, transport: Transport, job_id: str, base_dir: str | None, *, timeout: float) -> str:
        return await cancel(transport, job_id, base_dir, timeout)

    async def probe(self, transport: Transport, queries: list[JobQuery], base_dir: str | None, *,
                    timeout: float) -> ProbeResult:
        return await probe(transport, queries, base_dir, timeout)

    def merge(self, ev: Evidence, known: Known, *, grace: float) -> Verdict:
        return merge(ev, known, grace=grace)
