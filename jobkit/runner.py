"""Start, cancel and list jobs on a host: the wrapper in a detached tmux session.

Submit records the job locally (with a token of its own) and inserts the server row (``queued``,
with that token) before launching; the
session runs on a dedicated tmux socket (``<base>/tmux.sock``), is named after the full job id
and is always targeted as ``=<id>`` (exact match: ``-t job1`` would also find ``job10``). The
command reaches the wrapper as an exact argv: every element is shell-quoted for the remote sh,
and tmux, given several arguments, runs them without a shell.
"""

from __future__ import annotations

import logging
import secrets
import shlex
from dataclasses import dataclass

from jobkit.errors import (
    JobIdInUse,
    JobkitError,
    LaunchFailed,
    OutcomeUnknown,
    RemoteCommandFailed,
    TransportError,
)
from jobkit.ids import new_id, validate_id
from jobkit.remote import base_dir_word
from jobkit.store import AsyncStore
from jobkit.transport import Transport

log = logging.getLogger("jobkit.runner")


@dataclass(frozen=True)
class Submitted:
    job_id: str
    host: str


def tmux_new_session(session: str, line_word: str) -> str:
    """Shell (with ``$b`` the base directory) that starts a detached session ``session`` on the
    dedicated socket ``$b/tmux.sock``, running ``line_word`` (one shell word: the job's command
    line) with ``/bin/sh -c``. The server stays up with no session (exit-empty off): otherwise a
    job that ends at once takes the server down under new-session, which then reports a failure
    for a job that did run."""
    return (f"tmux -S \"$b/tmux.sock\" start-server \\; set-option -g exit-empty off \\; "
            f"set-option -g default-shell /bin/sh && "
            f"tmux -S \"$b/tmux.sock\" new-session -d -s {session} {line_word}")


#: Exit codes of the launch command: each proves what happened on the host.
LAUNCH_ID_USED = 67  # the id is used there (row, state file or claim): nothing was done
LAUNCH_NO_ROW = 68  # the server row could not be inserted: nothing was done
LAUNCH_NO_SESSION = 69  # tmux failed and the id is now fenced: the job can never start


def launch_command(job_id: str, argv: list[str], base_dir: str | None, env: dict[str, str] | None = None,
                   token: str | None = None) -> str:
    """The remote command line that inserts the row and starts the wrapper in tmux.

    Its exit status says what happened (``LAUNCH_*``): 0 launched, 67 the id is already used on
    the host (checked before anything is written: a claim log, a state file or a row of the same
    id), 68 no row could be inserted, 69 tmux failed and the id was fenced (claimed the way the
    wrapper claims it, so a session that tmux did start can never run the job) and the row
    removed; anything else leaves the outcome unknown.

    tmux gets the job as ONE shell-command string run by ``/bin/sh -c`` (set as the server's
    default-shell): given several arguments, tmux would split them at any argument that is, or
    ends with, ``;`` (its command separator), so a job argument ``;`` could inject tmux commands.
    The string never ends with ``;``: every element is shell-quoted.
    """
    validate_id(job_id)
    if not argv:
        raise JobkitError("empty command")
    if token is not None and not token.isalnum():
        raise JobkitError("a launch token is alphanumeric")
    extra = "".join(" " + shlex.join([f"{k}={v}"]) for k, v in (env or {}).items())
    static = shlex.join([job_id, *argv])
    tok = f"'{token}'" if token else "NULL"
    sql = "sqlite3 -batch -bail -cmd '.timeout 5000' \"$b/server.db\""
    return (
        f"b={base_dir_word(base_dir)}; id={job_id}; mkdir -p \"$b/jobs\" || exit {LAUNCH_NO_ROW}; "
        f"if [ -e \"$b/jobs/$id.wrapper.log\" ] || [ -e \"$b/jobs/$id.status\" ]; then "
        f"echo \"jobkit: job id $id already used on this host\" >&2; exit {LAUNCH_ID_USED}; fi; "
        f"out=$({sql} \"INSERT INTO jobs (id, status, token) VALUES ('$id', 'queued', {tok});\" 2>&1) || "
        f"{{ case $out in *UNIQUE*) echo \"jobkit: job id $id already used on this host\" >&2; "
        f"exit {LAUNCH_ID_USED};; esac; printf 'jobkit: cannot insert the row: %s\\n' \"$out\" >&2; "
        f"exit {LAUNCH_NO_ROW}; }}; "
        + r"""qb=$(printf '%s' "$b" | sed "s/'/'\\\\''/g"); """
        + "if ! out=$("
        + tmux_new_session(job_id, f"\"exec env JOBKIT_BASE_DIR='$qb'{extra} '$qb/bin/job_wrapper.sh' \""
                                   f"{shlex.quote(static)}")
        + " 2>&1); then "
        # tmux may have started the session before failing: whoever claims the id first decides
        + "if (set -C; printf 'jobkit-fence %s: launch failed\\n' \"$(date +%s)\" >\"$b/jobs/$id.wrapper.log\")"
        + f" 2>/dev/null; then {sql} \"DELETE FROM jobs WHERE id = '$id' AND status = 'queued'\" >/dev/null 2>&1; "
        + f"printf 'jobkit: tmux could not start the session: %s\\n' \"$out\" >&2; exit {LAUNCH_NO_SESSION}; "
        + "elif [ ! -e \"$b/jobs/$id.wrapper.log\" ]; then "
        + "printf 'jobkit: tmux failed and the id could not be fenced: %s\\n' \"$out\" >&2; exit 70; fi; fi"
    )


async def submit(transport: Transport, store: AsyncStore, host: str, argv: list[str], *,
                 job_id: str | None = None, base_dir: str | None = None,
                 env: dict[str, str] | None = None, timeout: float = 10.0) -> Submitted:
    """Record the job, then launch it on the host.

    Raises :class:`JobIdInUse` when the id is already used on the host (nothing is recorded),
    :class:`LaunchFailed` when the launch provably started nothing (the job is recorded
    ``failed``), and :class:`OutcomeUnknown` when the answer was lost after the command was sent
    (a timeout, a dropped connection): the job may be running, so it stays ``queued`` and the
    reconciliation decides (after the grace period, a job with nothing on the host is fenced and
    recorded "never started").
    """
    job_id = validate_id(job_id) if job_id is not None else new_id()
    token = secrets.token_hex(8)
    command = launch_command(job_id, argv, base_dir, env, token)
    await store.call(store.sync.add_job, job_id, host, argv, None, token)
    try:
        r = await transport.run(command, timeout=timeout)
    except TransportError as exc:
        if exc.sent:
            log.warning("%s: submit on %s: outcome unknown (%s); left queued", job_id, host, exc.message)
            raise OutcomeUnknown(
                f"submit of {job_id} on {host}: {exc.message}; the job may or may not have started: it stays "
                "queued and reconciliation will tell", job_id=job_id, host=host) from exc
        await store.call(store.sync.mark_failed_launch, job_id, str(exc))
        raise
    if r.exit_status == LAUNCH_ID_USED:
        await store.call(store.sync.forget_unlaunched, job_id, token)
        raise JobIdInUse(f"job id {job_id} already used on {host}: nothing recorded", host=host)
    if r.exit_status in (LAUNCH_NO_ROW, LAUNCH_NO_SESSION):
        why = (r.stderr.strip().splitlines() or ["launch failed"])[-1]
        await store.call(store.sync.mark_failed_launch, job_id, why)
        raise LaunchFailed(f"{job_id} could not be started on {host}: {why}", host=host, exit_status=r.exit_status,
                           stdout=r.stdout, stderr=r.stderr)
    if r.exit_status != 0:
        raise OutcomeUnknown(f"submit of {job_id} on {host}: the launch ended with exit {r.exit_status}; the job may "
                             "or may not have started: it stays queued and reconciliation will tell",
                             job_id=job_id, host=host, exit_status=r.exit_status, stderr=r.stderr)
    log.info("%s: submitted on %s: %s", job_id, host, argv)
    return Submitted(job_id, host)


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
