"""Fault injectors: one catalogue, one interface.

Every fault is a :class:`Fault` member with a description; :func:`inject` applies it to a host
and returns an :class:`Injected` handle whose ``restore()`` puts the host back (also usable as
``async with inject(...)``). Faults act through the host's :class:`~jobkit.transport.Transport`
and, for what SSH cannot do (pausing a container, mounting as root), through the lab handle.
:func:`applicable` says where a fault makes sense; injecting it elsewhere raises
:class:`FaultNotApplicable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from jobkit.errors import JobkitError
from jobkit.remote import base_dir_word
from jobkit.transport import Transport


class Fault(Enum):
    LOCKED_DB = "exclusive transaction (readers locked out too) held on server.db for a duration"
    CORRUPT_DB = "server.db replaced by garbage bytes"
    DELETED_DB = "server.db (and its WAL files) removed"
    DELETED_STATE_FILE = "a job's state file removed"
    TRUNCATED_STATE_FILE = "a job's state file cut in the middle of its JSON"
    GARBAGE_STATE_FILE = "a job's state file replaced by bytes that are not JSON"
    WRONG_FIELDS_STATE_FILE = "a job's state file replaced by valid JSON without the protocol's fields"
    SIGKILL_WRAPPER = "SIGKILL to a job's wrapper (nothing in the wrapper runs)"
    SIGTERM_WRAPPER = "SIGTERM to a job's wrapper"
    SIGHUP_WRAPPER = "SIGHUP to a job's wrapper"
    SIGKILL_JOB_GROUP = "SIGKILL to the job's whole process group"
    KILL_TMUX_SESSION = "tmux kill-session -t =<job> on the job's socket"
    KILL_TMUX_SERVER = "tmux kill-server on the job's socket"
    UNREACHABLE_HOST = "the host stops answering: container paused (lab) or the server refuses connections (local)"
    SLOW_HOST = "every answer from the host arrives later than the 5 s timeout"
    FULL_DISK = ("<base>/jobs as it was, read-only under an overlay whose writable layer is a full tmpfs with "
                 "free inodes: a file can be created, not written (needs root on the host)")
    MISSING_SQLITE3 = "sqlite3 removed from the wrapper's PATH (shim directory)"
    MISSING_FLOCK = "flock removed from the wrapper's PATH (shim directory)"
    MISSING_TMUX = "tmux removed from the wrapper's PATH (shim directory)"
    NO_DATE_ISO = "a date(1) without -I/--iso-8601 on the wrapper's PATH (shim directory)"
    HOST_REBOOT = "new kernel boot id and none of the user's processes left (lab containers)"
    CLOCK_STEP = "the wrapper's clock jumps back one hour (date(1) shim on its PATH)"

    @property
    def description(self) -> str:
        return str(self.value)


class FaultNotApplicable(JobkitError):
    """This fault cannot be injected on this kind of host."""


#: the bound on each command that makes a fault (or undoes it): the suite's own commands, not a
#: reconciler's query, so not the 5 s of the runtime; long enough for a loaded host
SETUP_TIMEOUT = 15.0


class FaultSetupError(JobkitError):
    """The fault could not be set up (or undone) on the host: an error of the suite, never a
    failure of the wrapper under test."""


@dataclass
class HostHandle:
    """What a fault needs to reach a host: its transport, its base dir, and the lab handle
    (a :class:`jobkit.lab.LabHost`, or None for a plain SSH host)."""

    transport: Transport
    base_dir: str | None = None
    lab: Any = None

    @property
    def kind(self) -> str:
        if self.lab is None:
            return "ssh"
        return "local" if self.lab.local is not None else "container"


@dataclass
class Injected:
    fault: Fault
    host: HostHandle
    env: dict[str, str] = field(default_factory=dict)  # environment to run the wrapper with
    _restore: list[str] = field(default_factory=list)  # shell commands run on restore
    _after: Any = None  # a coroutine function run on restore
    _task: asyncio.Task[Any] | None = None

    async def restore(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            if self._after is not None:
                await self._after()
            for cmd in self._restore:
                await self.host.transport.run(cmd, timeout=SETUP_TIMEOUT)
        except Exception as exc:
            raise FaultSetupError(f"{self.fault.name} could not be undone: {exc}") from exc

    async def __aenter__(self) -> Injected:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.restore()


def applicable(fault: Fault, kind: str) -> bool:
    """Where each fault makes sense: ``kind`` is local, container or ssh."""
    if fault in (Fault.UNREACHABLE_HOST, Fault.SLOW_HOST):
        return kind in ("local", "container")
    if fault is Fault.HOST_REBOOT:
        return kind == "container"
    if fault is Fault.FULL_DISK:
        return kind in ("local", "container")
    return True


def engine_cannot(fault: Fault, host: HostHandle) -> str | None:
    """Why the container engine of a lab host cannot make ``fault`` (None when it can): pausing a
    container (UNREACHABLE_HOST, SLOW_HOST) needs a freezer cgroup of the engine's own, which a
    rootless engine on cgroup v1 does not have."""
    if host.kind != "container" or fault not in (Fault.UNREACHABLE_HOST, Fault.SLOW_HOST):
        return None
    from jobkit.lab import engine

    e = engine()
    if e.can_pause:
        return None
    return (f"{fault.name} pauses the container, and {e.describe()} cannot: a rootless engine on cgroup v1 "
            "has no freezer cgroup of its own")


async def _root(host: HostHandle, command: str) -> None:
    """Run as root: locally (the local target runs as this user, root in CI) or docker exec."""
    if host.kind == "container":
        c = host.lab.container.get_wrapped_container()
        loop = asyncio.get_running_loop()
        code, out = await loop.run_in_executor(None, lambda: c.exec_run(["sh", "-c", command], user="root"))
        if code != 0:
            raise JobkitError(f"root command failed on the container: {command}", stderr=out.decode(errors="replace"))
    else:
        r = await host.transport.run(command, timeout=SETUP_TIMEOUT)
        if r.exit_status != 0:
            raise JobkitError(f"root command failed: {command}", stderr=r.stderr)


def _kill_group(sig: str, pgid: str) -> str:
    """Shell that sends SIG to process group PGID (a shell word) with the host's kill: dash and
    mksh need `--` before a negative pid; BusyBox rejects it ("invalid number") yet signals the
    group, so the form is chosen first (a kill -s 0 of the shell itself), never retried."""
    return (f'{{ if kill -s 0 -- "$$" 2>/dev/null; then kill -s {sig} -- "-{pgid}"; '
            f'else kill -s {sig} "-{pgid}"; fi; }}')


def _shim_script(shim: str, drop: str, extra: str = "") -> str:
    """Shell that builds a PATH shim dir (``shim``, a shell word) of symlinks to everything on
    PATH except ``drop``: one ``ln -s DIR/* SHIM/`` per PATH directory (a name already linked is
    kept, so earlier directories win, as in a PATH lookup), then ``drop`` removed. A few
    processes, not one per file: a host has thousands of programs."""
    return (
        f"d={shim}; mkdir -p \"$d\" || exit 1; "
        "IFS=:; for p in $PATH; do [ -n \"$p\" ] && [ -d \"$p\" ] && ln -s \"$p\"/* \"$d\"/ 2>/dev/null; done; "
        f"unset IFS; rm -f \"$d\"/{shlex.quote(drop)}; "
        f"{extra} echo \"$d\""
    )


async def inject(fault: Fault, host: HostHandle, *, job_id: str | None = None, seconds: float = 5.0) -> Injected:
    """Apply ``fault`` to ``host``; ``job_id`` for per-job faults, ``seconds`` for timed ones.
    Raises FaultNotApplicable where the fault cannot be made, FaultSetupError when making it
    failed (a command that failed or timed out on the host): never the wrapper's failure."""
    if not applicable(fault, host.kind):
        raise FaultNotApplicable(f"{fault.name} does not apply to a {host.kind} host")
    why = engine_cannot(fault, host)
    if why:
        raise FaultNotApplicable(why)
    inj = Injected(fault, host)
    try:
        return await _inject(inj, job_id=job_id, seconds=seconds)
    except BaseException as exc:
        # a setup command that failed or timed out may still have acted on the host (a timeout
        # says nothing about what the other side did): undo whatever part of it happened, so
        # what the suite does next finds the host as it was; the undo is written to be safe
        # whether the setup ran in full, in part or not at all
        with contextlib.suppress(Exception):
            await inj.restore()
        if isinstance(exc, (FaultNotApplicable, FaultSetupError)) or not isinstance(exc, Exception):
            raise
        raise FaultSetupError(f"{fault.name} could not be set up: {exc}", host=getattr(exc, "host", None),
                              stderr=getattr(exc, "stderr", "")) from exc


async def _inject(inj: Injected, *, job_id: str | None, seconds: float) -> Injected:
    """Make the fault; every undo is registered on ``inj`` before the step it undoes runs."""
    fault, host = inj.fault, inj.host
    t = host.transport
    b = base_dir_word(host.base_dir)
    state = f"{b}/jobs/{job_id}.status"
    keep = f"{b}/.fault-keep-{uuid.uuid4().hex[:8]}"

    if fault is Fault.LOCKED_DB:
        await t.run(f"(printf 'PRAGMA locking_mode=EXCLUSIVE;\\nBEGIN EXCLUSIVE;\\nUPDATE jobs SET status = status "
                    f"WHERE 0;\\n.system sleep {seconds:g}\\nCOMMIT;\\n' | sqlite3 -cmd '.timeout 5000' {b}/server.db) "
                    ">/dev/null 2>&1 &",
                    check=True, timeout=SETUP_TIMEOUT)
        await asyncio.sleep(0.3)  # the lock is taken
        inj._task = asyncio.create_task(asyncio.sleep(seconds))
    elif fault in (Fault.CORRUPT_DB, Fault.DELETED_DB):
        garbage = "head -c 8192 /dev/urandom >\"$b/server.db\"; " if fault is Fault.CORRUPT_DB else ""
        # the undo puts back what was moved away, and only then removes what is in its place
        inj._restore.append(f"b={b}; if [ -e {keep}/server.db ]; then "
                            f"rm -f \"$b/server.db\" \"$b/server.db-wal\" \"$b/server.db-shm\"; "
                            f"mv {keep}/* \"$b/\" 2>/dev/null; fi; rmdir {keep} 2>/dev/null; true")
        await t.run(f"b={b}; mkdir -p {keep}; for f in server.db server.db-wal server.db-shm; do "
                    f"[ -e \"$b/$f\" ] && mv \"$b/$f\" {keep}/; done; {garbage}true", check=True,
                    timeout=SETUP_TIMEOUT)
    elif fault in (Fault.DELETED_STATE_FILE, Fault.TRUNCATED_STATE_FILE, Fault.GARBAGE_STATE_FILE,
                   Fault.WRONG_FIELDS_STATE_FILE):
        if job_id is None:
            raise JobkitError(f"{fault.name} needs a job id")
        change = {
            Fault.DELETED_STATE_FILE: f"rm -f {state}",
            Fault.TRUNCATED_STATE_FILE: f"head -c 40 {keep} >{state}",
            Fault.GARBAGE_STATE_FILE: f"printf '\\377\\376 not json {{{{' >{state}",
            Fault.WRONG_FIELDS_STATE_FILE: f"printf '%s\\n' '{{\"hello\": \"world\", \"status\": 42}}' >{state}",
        }[fault]
        inj._restore.append(f"[ ! -e {keep} ] || mv -f {keep} {state}")
        await t.run(f"cp {state} {keep} && {change}", check=True, timeout=SETUP_TIMEOUT)
    elif fault in (Fault.SIGKILL_WRAPPER, Fault.SIGTERM_WRAPPER, Fault.SIGHUP_WRAPPER, Fault.SIGKILL_JOB_GROUP):
        if job_id is None:
            raise JobkitError(f"{fault.name} needs a job id")
        field_name = "pgid" if fault is Fault.SIGKILL_JOB_GROUP else "wrapper_pid"
        sig = {"SIGKILL_WRAPPER": "KILL", "SIGTERM_WRAPPER": "TERM", "SIGHUP_WRAPPER": "HUP",
               "SIGKILL_JOB_GROUP": "KILL"}[fault.name]
        kill = _kill_group(sig, "$p") if fault is Fault.SIGKILL_JOB_GROUP else f"kill -s {sig} $p"
        if fault is Fault.SIGKILL_WRAPPER:  # nothing is left running after restore
            inj._restore.append(f"p=$(sed -n 's/.*\"pgid\":\\([0-9][0-9]*\\).*/\\1/p' {state}); "
                                f"[ -z \"$p\" ] || {_kill_group('KILL', '$p')} 2>/dev/null; true")
        await t.run(f"p=$(sed -n 's/.*\"{field_name}\":\\([0-9][0-9]*\\).*/\\1/p' {state}); [ -n \"$p\" ] && "
                    f"{kill}", check=True, timeout=SETUP_TIMEOUT)
    elif fault is Fault.KILL_TMUX_SESSION:
        await t.run(f"tmux -S {b}/tmux.sock kill-session -t ={shlex.quote(job_id or '')}", check=True,
                    timeout=SETUP_TIMEOUT)
    elif fault is Fault.KILL_TMUX_SERVER:
        await t.run(f"tmux -S {b}/tmux.sock kill-server", check=True, timeout=SETUP_TIMEOUT)
    elif fault is Fault.UNREACHABLE_HOST or fault is Fault.SLOW_HOST:
        if host.kind == "local":
            local = host.lab.local
            if fault is Fault.UNREACHABLE_HOST:
                await asyncio.get_running_loop().run_in_executor(None, local.call_in_thread, local.stop_accepting)

                async def back() -> None:
                    await asyncio.get_running_loop().run_in_executor(None, local.call_in_thread,
                                                                     local.resume_accepting)
            else:
                local.delay = max(seconds, 6.0)

                async def back() -> None:
                    local.delay = 0.0
            inj._after = back
        else:
            c = host.lab.container.get_wrapped_container()
            await asyncio.get_running_loop().run_in_executor(None, c.pause)

            async def unpause() -> None:
                await asyncio.get_running_loop().run_in_executor(None, c.unpause)
            inj._after = unpause
    elif fault is Fault.FULL_DISK:
        if host.kind == "local" and (await t.run("id -u", timeout=SETUP_TIMEOUT)).stdout.strip() != "0":
            raise FaultNotApplicable("FULL_DISK mounts filesystems: the local target is not root")
        # What is in <base>/jobs stays visible (a running job keeps its earlier state file): it is
        # the read-only lower layer of an overlay mounted over the directory itself. Every change
        # goes to the upper layer, on a small tmpfs whose blocks are then filled and whose inodes
        # stay free: a file can be created but not written, and one rewritten in place (O_TRUNC)
        # is left empty (truncating a copy on a full tmpfs would free its page for the rewrite).
        stage = f"{b}/.fault-full-{uuid.uuid4().hex[:8]}"
        await _root(host, f"b={b}; s={stage}; mkdir -p \"$b/jobs\" \"$s\" && mount -t tmpfs -o size=256k jobkitfull "
                          "\"$s\" && { mkdir \"$s/upper\" \"$s/work\" && "
                          "chown \"$(stat -c %u:%g \"$b/jobs\")\" \"$s/upper\" && "
                          "chmod \"$(stat -c %a \"$b/jobs\")\" \"$s/upper\" && "
                          "mount -t overlay jobkitfull -o \"lowerdir=$b/jobs,upperdir=$s/upper,workdir=$s/work\" "
                          "\"$b/jobs\" || { umount \"$s\"; false; }; } || { rmdir \"$s\"; exit 1; }; "
                          "(cat /dev/zero >\"$s/fill\") 2>/dev/null; true")

        async def unmount() -> None:
            await _root(host, f"b={b}; s={stage}; umount \"$b/jobs\" || umount -l \"$b/jobs\"; "
                              "umount \"$s\" || umount -l \"$s\"; rmdir \"$s\"")
        inj._after = unmount
    elif fault in (Fault.MISSING_SQLITE3, Fault.MISSING_FLOCK, Fault.MISSING_TMUX, Fault.NO_DATE_ISO,
                   Fault.CLOCK_STEP):
        drop = {Fault.MISSING_SQLITE3: "sqlite3", Fault.MISSING_FLOCK: "flock", Fault.MISSING_TMUX: "tmux",
                Fault.NO_DATE_ISO: "date", Fault.CLOCK_STEP: "date"}[fault]
        extra = ""
        if fault is Fault.NO_DATE_ISO:
            extra = ("real=$(command -v date); printf '#!/bin/sh\\nfor a in \"$@\"; do case $a in -I*|--iso*) "
                     "echo \"date: invalid option -- I\" >&2; exit 1;; esac; done\\nexec %s \"$@\"\\n' \"$real\" "
                     ">\"$d/date\"; chmod +x \"$d/date\";")
        if fault is Fault.CLOCK_STEP:
            extra = ("real=$(command -v date); printf '#!/bin/sh\\nexec %s -d \"@$(( $(%s +%%s) - 3600 ))\" \"$@\"\\n' "
                     "\"$real\" \"$real\" >\"$d/date\"; chmod +x \"$d/date\";")
        shim = f"{b}/.fault-path-{uuid.uuid4().hex[:8]}"
        inj._restore.append(f"rm -rf {shim}")
        r = await t.run(_shim_script(shim, drop, extra), check=True, timeout=SETUP_TIMEOUT)
        inj.env["PATH"] = r.stdout.strip().splitlines()[-1]
    elif fault is Fault.HOST_REBOOT:
        fake = uuid.uuid4()
        await _root(host, f"printf '%s\\n' {fake} >/run/jobkit-boot_id && "
                          "mount --bind /run/jobkit-boot_id /proc/sys/kernel/random/boot_id && "
                          "kill -s KILL -1 2>/dev/null; true")  # every process but pid 1 (sshd) and us

        async def unreboot() -> None:
            await _root(host, "umount /proc/sys/kernel/random/boot_id")
        inj._after = unreboot
    else:  # pragma: no cover - every member is handled above
        raise FaultNotApplicable(fault.name)
    return inj
