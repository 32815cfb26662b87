"""What a clause works with: one target, the wrapper under test on it, and evidence recording."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobkit.errors import RemoteTimeout
from jobkit.faults import HostHandle
from jobkit.runner import tmux_new_session
from jobkit.transport import CommandResult, Transport

# a group is alive when a non-zombie process is in it (busybox-safe)
GROUP_ALIVE = ('for s in /proc/[0-9]*/stat; do l=; {{ read -r l <"$s"; }} 2>/dev/null || continue; '
               'set -- ${{l##*") "}}; [ "$3" = {pgid} ] && [ "$1" != Z ] && {{ echo alive; break; }}; done; true')


@dataclass
class Evidence:
    lines: list[str] = field(default_factory=list)

    def add(self, title: str, text: str) -> None:
        self.lines.append(f"## {title}\n{text.rstrip()}")


class Ctx:
    """One clause's view of one target."""

    def __init__(self, target: str, host: HostHandle, *, base_abs: str, wrapper_abs: str, grace: int = 2,
                 patience: float = 1.0) -> None:
        self.target = target
        self.host = host
        self.t: Transport = host.transport
        self.base_abs = base_abs  # the base directory, resolved on the host
        self.b = shlex.quote(base_abs)
        self.wrapper_abs = wrapper_abs
        self.wrapper = shlex.quote(wrapper_abs)
        self.grace = grace
        self.evidence = Evidence()
        self.ids: list[str] = []
        self.commands: list[str] = []  # the shell commands the clause ran (polls left out), for a repro
        # how long waits for a wrapper's answer last, as a factor of each clause's default (a test
        # of deviant wrappers, whose answer comes at once or never, shortens them)
        self.patience = patience
        self._cleanups: list[Callable[[], object]] = []
        self.stores: list[Any] = []  # the clause's own local stores (R clauses): history-checked

    def on_cleanup(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` when the clause is over (whatever its outcome), last registered first."""
        self._cleanups.append(fn)

    def cleanup(self) -> None:
        while self._cleanups:
            with contextlib.suppress(Exception):
                self._cleanups.pop()()

    # --- plumbing ---------------------------------------------------------------------------
    async def sh(self, command: str, *, stdin: str | None = None, timeout: float = 30.0,
                 record: bool = True) -> CommandResult:
        if record:
            self.commands.append(command)
        try:
            r = await self.t.run(command, stdin=stdin, timeout=timeout)
        except RemoteTimeout:
            self.evidence.add(f"$ {command[:300]}", f"no exit within {timeout:g} s")
            raise AssertionError(f"a command the clause ran did not finish within {timeout:g} s (expected the "
                                 f"wrapper to exit when its job ends): {command[:200]}") from None
        if record:
            self.evidence.add(f"$ {command[:300]}", f"exit {r.exit_status}\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
        return r

    def new_id(self, tag: str) -> str:
        job = f"cf-{tag}-{uuid.uuid4().hex[:8]}"
        self.ids.append(job)
        return job

    async def new_job(self, tag: str) -> str:
        """A fresh id with its row inserted, as a client does before launching the wrapper."""
        job = self.new_id(tag)
        await self.insert_row(job)
        return job

    def env(self, extra: dict[str, str] | None = None) -> str:
        env = {"JOBKIT_BASE_DIR": self.base_abs, "JOBKIT_KILL_GRACE": str(self.grace), **(extra or {})}
        return shlex.join(f"{k}={v}" for k, v in env.items())

    async def insert_row(self, job: str) -> None:
        """The client's INSERT (the suite's harness, not under test): retried while another
        connection (a wrapper finishing a job of an earlier clause) holds the database."""
        for _ in range(3):
            r = await self.sh(f"sqlite3 -cmd '.timeout 5000' {self.b}/server.db \"INSERT INTO jobs (id, status) "
                              f"VALUES ('{job}', 'queued')\"", timeout=15)
            if r.exit_status == 0 or "locked" not in r.stderr:
                return
        raise AssertionError(f"the client could not insert the row of {job}: {r.stderr}")

    # --- running the wrapper ----------------------------------------------------------------
    async def run(self, job: str, argv: list[str], *, env: dict[str, str] | None = None, via: str = "",
                  timeout: float = 60.0, redirect: str = "") -> CommandResult:
        """The wrapper in the foreground of an SSH command; ``via`` e.g. ``sh`` to force /bin/sh."""
        return await self.sh(f"b={self.b}; cd \"$b\" && env {self.env(env)} {via} {self.wrapper} "
                             f"{shlex.join([job, *argv])} {redirect}", timeout=timeout)

    async def start(self, job: str, argv: list[str], *, env: dict[str, str] | None = None) -> int:
        """The wrapper in the background (signals INT/QUIT arrive ignored: use tmux for those)."""
        r = await self.sh(f"b={self.b}; cd \"$b\" && env {self.env(env)} {self.wrapper} {shlex.join([job, *argv])} "
                          f">\"$b/.conformance/{job}.out\" 2>&1 </dev/null & echo $!")
        return self._pid_out(r, "the wrapper in the background")

    @staticmethod
    def _pid_out(r: CommandResult, what: str) -> int:
        words = r.stdout.split()
        if r.exit_status != 0 or not words or not words[-1].isdigit():
            raise AssertionError(f"could not start {what} (expected its pid, found exit {r.exit_status}: "
                                 f"{(r.stdout + r.stderr).strip()[-200:]!r})")
        return int(words[-1])

    async def start_tmux(self, job: str, argv: list[str], *, env: dict[str, str] | None = None) -> int:
        """The wrapper as production starts it: a detached tmux session (one shell-command string,
        see jobkit.runner); returns the wrapper's pid (the pane's)."""
        line = f"exec env {self.env(env)} {self.wrapper} {shlex.join([job, *argv])}"
        r = await self.sh(f"b={self.b}; {tmux_new_session(job, shlex.quote(line))} && "
                          f"tmux -S \"$b/tmux.sock\" display-message -p -t ={job}: '#{{pane_pid}}'")
        return self._pid_out(r, f"{job} in tmux")

    # --- reading the stores -----------------------------------------------------------------
    async def state_raw(self, job: str) -> str | None:
        r = await self.sh(f"cat {self.b}/jobs/{job}.status 2>/dev/null || echo __MISSING__", record=False)
        return None if r.stdout.strip() == "__MISSING__" else r.stdout

    async def state(self, job: str) -> dict[str, Any] | None:
        raw = await self.state_raw(job)
        if raw is None:
            return None
        return parse_state(job, raw)

    def pid(self, job: str, st: dict[str, Any], key: str = "pid") -> int:
        """An integer pid field of a state file (``pgid`` falls back to ``pid``), or the clause fails."""
        value = st.get(key)
        if key == "pgid" and not isinstance(value, int):
            value = st.get("pid")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 1:
            raise AssertionError(f"the state file of {job} records no {key} (expected a positive integer, "
                                 f"found {value!r}): {json.dumps(st)[:300]}")
        return value

    async def row(self, job: str) -> dict[str, Any] | None:
        r = await self.sh(f"sqlite3 -json -cmd '.timeout 5000' {self.b}/server.db \"SELECT * FROM jobs WHERE "
                          f"id = '{job}'\"", record=False, timeout=15)
        if r.exit_status != 0 or not r.stdout.strip():
            return None
        try:
            rows = json.loads(r.stdout)
        except ValueError:
            return None
        return dict(rows[0]) if isinstance(rows, list) and rows and isinstance(rows[0], dict) else None

    async def wait_state(self, job: str, statuses: tuple[str, ...], seconds: float = 20.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        seconds *= self.patience
        deadline = loop.time() + seconds
        last: dict[str, Any] | None = None
        while loop.time() < deadline:
            last = await self.state(job)
            if last is not None and last.get("status") in statuses:
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"expected the state file of {job} to say {' or '.join(statuses)} within {seconds:g} s; "
                             + ("there is no state file" if last is None else f"it says {json.dumps(last)[:300]}"))

    async def wait_row(self, job: str, status: str, seconds: float = 20.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        seconds *= self.patience
        deadline = loop.time() + seconds
        last = None
        while loop.time() < deadline:
            last = await self.row(job)
            if last is not None and last.get("status") == status:
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"expected the database row of {job} to say {status} within {seconds:g} s; "
                             + ("there is no row" if last is None else f"it says {json.dumps(last)[:300]}"))

    async def wait_gone(self, pgid: int, pid: object = None, seconds: float = 10.0) -> None:
        """Poll until no live process of group ``pgid`` (and no process ``pid``) is left."""
        loop = asyncio.get_running_loop()
        seconds *= self.patience
        deadline = loop.time() + seconds
        check = f"kill -0 {int(pid)} 2>/dev/null" if isinstance(pid, int) else "false"
        while await self.group_alive(pgid) or (await self.sh(check, record=False)).exit_status == 0:
            if loop.time() > deadline:
                raise AssertionError(f"expected process group {pgid} to be gone within {seconds:g} s; "
                                     "it is still alive")
            await asyncio.sleep(0.05)

    async def group_alive(self, pgid: int) -> bool:
        r = await self.sh(GROUP_ALIVE.format(pgid=int(pgid)), record=False)
        return "alive" in r.stdout

    async def collect(self, job: str) -> None:
        """Attach the job's stores and logs to the evidence."""
        r = await self.sh(f"b={self.b}; echo '--- state file'; cat \"$b/jobs/{job}.status\" 2>&1; "
                          f"echo '--- row'; sqlite3 -cmd '.timeout 2000' \"$b/server.db\" \"SELECT * FROM jobs "
                          f"WHERE id = '{job}'\" 2>&1; echo '--- wrapper log'; "
                          f"tail -n 20 \"$b/jobs/{job}.wrapper.log\" 2>&1; echo '--- wrapper output'; "
                          f"tail -n 20 \"$b/.conformance/{job}.out\" 2>&1",
                          record=False, timeout=15)
        self.evidence.add(f"stores and logs of {job}", r.stdout)


def parse_state(job: str, raw: str) -> dict[str, Any]:
    """A state file's text as its JSON object, or the clause fails with a sentence saying what it is."""
    if not raw.strip():
        raise AssertionError(f"the state file of {job} is empty (expected one JSON object)")
    try:
        data = json.loads(raw)
    except ValueError:
        raise AssertionError(f"the state file of {job} is not valid JSON (expected one JSON object, found "
                             f"{raw[:200]!r})") from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(data), "null")
        raise AssertionError(f"the state file of {job} is {kind} (expected one JSON object, found {raw[:200]!r})")
    return data
