"""Start, cancel and list jobs on a host: the wrapper in a detached tmux session.

Submit records the job locally and inserts the server row (``queued``) before launching; the
session runs on a dedicated tmux socket (``<base>/tmux.sock``), is named after the full job id
and is always targeted as ``=<id>`` (exact match: ``-t job1`` would also find ``job10``). The
command reaches the wrapper as an exact argv: every element is shell-quoted for the remote sh,
and tmux, given several arguments, runs them without a shell.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass

from jobkit.errors import JobkitError, RemoteCommandFailed
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


def launch_command(job_id: str, argv: list[str], base_dir: str | None, env: dict[str, str] | None = None) -> str:
    """The remote command line that inserts the row and starts the wrapper in tmux.

    tmux gets the job as ONE shell-command string run by ``/bin/sh -c`` (set as the server's
    default-shell): given several arguments, tmux would split them at any argument that is, or
    ends with, ``;`` (its command separator), so a job argument ``;`` could inject tmux commands.
    The string never ends with ``;``: every element is shell-quoted.
    """
    validate_id(job_id)
    if not argv:
        raise JobkitError("empty command")
    extra = "".join(" " + shlex.join([f"{k}={v}"]) for k, v in (env or {}).items())
    static = shlex.join([job_id, *argv])
    return (
        f"b={base_dir_word(base_dir)}; set -e; "
        f"sqlite3 -batch -bail -cmd '.timeout 5000' \"$b/server.db\" "
        f"\"INSERT INTO jobs (id, status) VALUES ('{job_id}', 'queued');\"; "
        + r"""qb=$(printf '%s' "$b" | sed "s/'/'\\\\''/g"); """
        + tmux_new_session(job_id, f"\"exec env JOBKIT_BASE_DIR='$qb'{extra} '$qb/bin/job_wrapper.sh' \""
                                   f"{shlex.quote(static)}")
    )


async def submit(transport: Transport, store: AsyncStore, host: str, argv: list[str], *,
                 job_id: str | None = None, base_dir: str | None = None,
                 env: dict[str, str] | None = None, timeout: float = 10.0) -> Submitted:
    job_id = validate_id(job_id) if job_id is not None else new_id()
    command = launch_command(job_id, argv, base_dir, env)
    await store.call(store.sync.add_job, job_id, host, argv)
    try:
        await transport.run(command, timeout=timeout, check=True)
    except JobkitError as exc:
        await store.call(store.sync.mark_failed_launch, job_id, str(exc))
        raise
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
        "s=$(sed -n 's/.*\"status\":\"\\([a-z]*\\)\".*/\\1/p' \"$f\" 2>/dev/null); "
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
