"""Every fault injector restores the host: after inject + restore, the next job runs clean."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import wrapper_dir
from jobkit.conformance.clauses import Clause
from jobkit.conformance.context import Ctx
from jobkit.conformance.runner import ERROR, FAIL, check_clause, setup_target
from jobkit.errors import RemoteTimeout
from jobkit.faults import Fault, FaultNotApplicable, FaultSetupError, HostHandle, _shim_script, applicable, inject
from jobkit.lab import Lab, LabHost, offline_targets
from jobkit.transport import CommandResult
from jobkit.transport_ssh import SSHTransport

PER_JOB = {Fault.DELETED_STATE_FILE, Fault.TRUNCATED_STATE_FILE, Fault.GARBAGE_STATE_FILE,
           Fault.WRONG_FIELDS_STATE_FILE, Fault.SIGKILL_WRAPPER, Fault.SIGTERM_WRAPPER, Fault.SIGHUP_WRAPPER,
           Fault.SIGKILL_JOB_GROUP, Fault.KILL_TMUX_SESSION}
TARGETS = [pytest.param("local", id="local"),
           *(pytest.param(t, id=t, marks=pytest.mark.container) for t in offline_targets())]


@pytest.fixture(scope="module", params=TARGETS)
def host(request: pytest.FixtureRequest) -> Iterator[LabHost]:
    with Lab() as lab:
        yield lab.start(request.param, fresh=request.param != "local")


def test_the_catalogue_describes_every_fault() -> None:
    for f in Fault:
        assert len(f.description) > 20, f


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(Fault), ids=[f.name for f in Fault])
def test_inject_then_restore_leaves_the_host_clean(host: LabHost, fault: Fault) -> None:
    async def go() -> None:
        t = SSHTransport(host.spec)
        try:
            handle = HostHandle(t, None, host)
            if not applicable(fault, handle.kind):  # refused, loudly, rather than faked
                with pytest.raises(FaultNotApplicable):
                    await inject(fault, handle, job_id="x")
                return
            base, wrapper = await setup_target(t, "~/.jobkit-faults", wrapper_dir() / "job_wrapper.sh",
                                               wrapper_dir() / "server_schema.sql")
            handle.base_dir = base
            ctx = Ctx(host.target, handle, base_abs=base, wrapper_abs=wrapper)
            job = ctx.new_id("victim")
            await ctx.insert_row(job)
            await ctx.start_tmux(job, ["sleep", "60"])
            await ctx.wait_state(job, ("running",))
            inj = await inject(fault, handle, job_id=job, seconds=1)
            await inj.restore()
            t2 = SSHTransport(host.spec)  # a fresh connection: the host answers again
            ctx.t = t2
            handle.transport = t2
            clean = ctx.new_id("clean")
            await ctx.insert_row(clean)
            r = await ctx.run(clean, ["sh", "-c", "echo fine"], timeout=60)
            assert r.exit_status == 0, r.stderr
            st = await ctx.wait_state(clean, ("completed", "failed"))
            assert (st["status"], st["exit_code"], st["db"]) == ("completed", 0, "ok")
            check = await ctx.sh(f"sqlite3 -cmd '.timeout 5000' {ctx.b}/server.db 'PRAGMA integrity_check'; "
                                 f"ls -a {ctx.b} | grep -c '^.fault-' ; mount | grep -c jobkitfull; "
                                 "cat /proc/sys/kernel/random/boot_id")
            lines = check.stdout.split()
            assert lines[:3] == ["ok", "0", "0"], check.stdout
            await ctx.sh(f"tmux -S {ctx.b}/tmux.sock kill-session -t ={job} 2>/dev/null; true")
            await t2.close()
        finally:
            await t.close()

    asyncio.run(go())


@pytest.mark.slow
def test_full_disk_keeps_what_was_there_and_takes_no_data(host: LabHost) -> None:
    """FULL_DISK: what was in <base>/jobs stays readable (a running job keeps its state file), a
    file can be created but not written, one rewritten in place is left empty, and restore puts
    back the directory exactly as it was."""
    async def go() -> None:
        t = SSHTransport(host.spec)
        try:
            handle = HostHandle(t, None, host)
            if not applicable(Fault.FULL_DISK, handle.kind):
                return
            base, _ = await setup_target(t, "~/.jobkit-faults-full", wrapper_dir() / "job_wrapper.sh",
                                         wrapper_dir() / "server_schema.sql")
            handle.base_dir = base
            j = shlex.quote(f"{base}/jobs")
            await t.run(f"cd {j} && rm -f fd-* && printf '%s\\n' '{{\"status\":\"running\"}}' >fd-kept.status && "
                        "cp fd-kept.status fd-rewritten.status", check=True)
            listing = f"cd {j} && ls -a | md5sum && cat fd-kept.status fd-rewritten.status"
            before = (await t.run(listing, check=True)).stdout
            async with await inject(Fault.FULL_DISK, handle):
                r = await t.run(f"cd {j} && cat fd-kept.status && {{ true >fd-new && echo created; }}; "
                                "{ printf x >fd-data && echo WROTE-NEW; } 2>/dev/null; "
                                "{ printf y >>fd-kept.status && echo APPENDED; } 2>/dev/null; "
                                "{ printf '%s\\n' '{\"status\":\"completed\"}' >fd-rewritten.status && "
                                "echo REWROTE; } 2>/dev/null; wc -c <fd-rewritten.status", timeout=15)
                assert r.stdout.split() == ['{"status":"running"}', "created", "0"], r.stdout + r.stderr
            after = await t.run(f"{listing}; mount | grep -c jobkitfull; "
                                f"ls -a {shlex.quote(base)} | grep -c '^.fault-'", timeout=15)
            assert after.stdout == before + "0\n0\n", after.stdout
        finally:
            await t.close()

    asyncio.run(go())


def test_the_path_shim_is_built_in_a_few_processes_earlier_directories_winning(tmp_path: Path) -> None:
    first, second, base = tmp_path / "first", tmp_path / "second", tmp_path / "base"
    for d in (first, second, base):
        d.mkdir()
    for d, names in ((first, ["tool", "sqlite3"]), (second, ["tool", "other", "sqlite3"])):
        for n in names:
            (d / n).write_text(f"#!/bin/sh\necho {d.name}\n")
            (d / n).chmod(0o755)
    many = tmp_path / "many"  # a host has thousands of programs: one process per file took seconds
    many.mkdir()
    for i in range(3000):
        (many / f"prog{i}").touch()
    busybox = shutil.which("busybox")
    real_ln = shutil.which("ln")
    assert real_ln is not None
    counted = tmp_path / "ln-calls"
    for sh in ("sh", "busybox sh"):
        if shutil.which(sh.split()[0]) is None:
            continue
        # every ln the shim runs is counted (BusyBox's own ln under BusyBox's sh): one per PATH
        # directory, never one per program (3000 here, seconds on a real host)
        count = tmp_path / ("count-bb" if sh.startswith("busybox") else "count")
        count.mkdir()
        ln = f"{busybox} ln" if sh.startswith("busybox") else real_ln
        (count / "ln").write_text(f"#!/bin/sh\necho x >>'{counted}'\nexec {ln} \"$@\"\n")
        (count / "ln").chmod(0o755)
        counted.write_text("")
        path = f"{count}:{first}::{tmp_path}/missing:{second}:{many}:/usr/bin:/bin"
        script = _shim_script(shlex.quote(str(base / ".fault-path-test")), "sqlite3")
        r = subprocess.run([*sh.split(), "-c", f"PATH={shlex.quote(path)}; {script}"], capture_output=True,
                           text=True, check=True, timeout=60)
        calls = len(counted.read_text().splitlines())
        assert 1 <= calls <= len(path.split(":")), f"{sh}: the shim ran ln {calls} times"
        shim = Path(r.stdout.strip().splitlines()[-1])
        assert os.readlink(shim / "tool") == str(first / "tool"), sh  # the first directory wins
        assert os.readlink(shim / "other") == str(second / "other"), sh
        assert (shim / "ls").exists(), sh
        assert (shim / "prog2999").exists(), sh
        assert not (shim / "sqlite3").is_symlink(), sh
        assert not (shim / "sqlite3").exists(), sh
        shutil.rmtree(shim)


class _TimingOut:
    """A transport whose every command times out, as a loaded host's can."""

    host_name = "slow"

    async def run(self, command: str, **kw: object) -> CommandResult:
        raise RemoteTimeout("no answer within 5 s", host="slow", command=command)

    async def close(self) -> None:
        return None


def test_a_fault_that_cannot_be_set_up_is_the_suites_error_never_the_wrappers_failure() -> None:
    host = HostHandle(_TimingOut(), "/tmp/nowhere")  # type: ignore[arg-type]

    async def uses_a_shim(ctx: Ctx) -> None:
        async with await inject(Fault.MISSING_SQLITE3, ctx.host):
            raise AssertionError("not reached")

    async def fails(ctx: Ctx) -> None:
        raise AssertionError("the wrapper lost the record")

    async def go() -> None:
        with pytest.raises(FaultSetupError, match="MISSING_SQLITE3 could not be set up"):
            await inject(Fault.MISSING_SQLITE3, host)
        ctx = Ctx("slow", host, base_abs="/tmp/nowhere", wrapper_abs="/tmp/nowhere/w.sh")
        outcome, message = await check_clause(Clause("W-0", "test", "", uses_a_shim), ctx)
        assert (outcome, "not the wrapper's failure" in message) == (ERROR, True), message
        assert await check_clause(Clause("W-0", "test", "", fails), ctx) == (FAIL, "the wrapper lost the record")

    asyncio.run(go())


class _LateTimeout:
    """A real transport whose first command times out: after running on the host (the timeout
    fired after the remote side acted) or before reaching it. Later commands (the undo) pass."""

    def __init__(self, t: SSHTransport, acted: bool) -> None:
        self.t, self.acted, self.fired = t, acted, False
        self.host_name = t.host_name

    async def run(self, command: str, **kw: object) -> CommandResult:
        if not self.fired:
            self.fired = True
            if self.acted:
                await self.t.run(command, **kw)  # type: ignore[arg-type]
            raise RemoteTimeout("no answer within 5s", host="local", command=command)
        return await self.t.run(command, **kw)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.t.close()


@pytest.mark.slow
@pytest.mark.parametrize("acted", [True, False], ids=["acted", "never-arrived"])
@pytest.mark.parametrize("fault", [Fault.DELETED_DB, Fault.CORRUPT_DB, Fault.DELETED_STATE_FILE,
                                   Fault.GARBAGE_STATE_FILE, Fault.MISSING_SQLITE3, Fault.CLOCK_STEP],
                         ids=lambda f: f.name)
def test_a_fault_setup_that_timed_out_is_undone_whether_it_acted_or_not(local_host: LabHost, fault: Fault,
                                                                        acted: bool) -> None:
    """A timeout says nothing of what the host did: the setup that timed out is undone, and the
    undo is safe when the setup never ran (the DB moved away under the clauses that came next,
    in a loaded run, when DELETED_DB's setup outlived its timeout)."""
    async def go() -> None:
        t = SSHTransport(local_host.spec)
        try:
            base, _ = await setup_target(t, "~/.jobkit-faults-late", wrapper_dir() / "job_wrapper.sh",
                                         wrapper_dir() / "server_schema.sql")
            b = shlex.quote(base)
            job = f"late-{os.urandom(4).hex()}"
            await t.run(f"sqlite3 -cmd '.timeout 5000' {b}/server.db \"INSERT INTO jobs(id, status) VALUES "
                        f"('{job}', 'running')\" && printf '%s\\n' '{{\"id\":\"{job}\",\"status\":\"running\"}}' "
                        f">{b}/jobs/{job}.status", check=True)
            look = (f"cd {b} && sqlite3 -cmd '.timeout 5000' server.db \"PRAGMA integrity_check; SELECT count(*) "
                    f"FROM jobs WHERE id = '{job}'\" && md5sum <jobs/{job}.status && "
                    "{ ls -a | grep -c '^.fault-' || true; }")
            before = (await t.run(look, check=True)).stdout
            late = _LateTimeout(t, acted)
            with pytest.raises(FaultSetupError, match=f"{fault.name} could not be set up"):
                await inject(fault, HostHandle(late, base, local_host), job_id=job)  # type: ignore[arg-type]
            assert (await t.run(look, timeout=15)).stdout == before
        finally:
            await t.close()

    asyncio.run(go())
