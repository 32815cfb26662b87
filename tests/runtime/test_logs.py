"""A job's output kept on its host and read back in bounded ranges (`jobkit.logs`), on `local`
and on every lab target: the tmux launch keeps it, a huge output is read from its end, a running
job is followed until it ends, and a job without output says why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable

import pytest

from jobkit.backends.tmux import TmuxBackend
from jobkit.lab import LabHost
from jobkit.logs import CHUNK, NoOutput, Stream, read_output, tail_offset
from jobkit.runner import submit
from jobkit.store import AsyncStore
from jobkit.transport import DEFAULT_TIMEOUT, CommandResult
from jobkit.transport_ssh import SSHTransport
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.slow
B = '"$HOME/.jobkit"'


def jid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


class Counting:
    """The real transport, with the size of every answer written down."""

    def __init__(self, inner: SSHTransport) -> None:
        self.inner = inner
        self.answers: list[int] = []

    @property
    def host_name(self) -> str:
        return self.inner.host_name

    async def run(self, command: str, *, stdin: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                  check: bool = False) -> CommandResult:
        r = await self.inner.run(command, stdin=stdin, timeout=timeout, check=check)
        self.answers.append(len(r.stdout))
        return r

    async def close(self) -> None:
        await self.inner.close()


async def final_on_host(t: SSHTransport, job: str) -> bool:
    r = await t.run(f"cat {B}/jobs/{job}.status 2>/dev/null")
    return ('"status":"completed"' in r.stdout or '"status":"failed"' in r.stdout) and '"db":"pending"' not in r.stdout


async def exists(t: SSHTransport, path: str) -> bool:
    return (await t.run(f"test -e {path}")).exit_status == 0


async def collect(t: SSHTransport | Counting, job: str, **kw: object) -> bytes:
    return b"".join([c async for c in read_output(t, job, **kw)])  # type: ignore[arg-type]


async def test_the_tmux_launch_keeps_the_jobs_output_on_the_host(host: LabHost, store: AsyncStore,
                                                               transport: SSHTransport) -> None:
    job = (await submit(transport, store, host.target,
                        ["sh", "-c", 'echo out1; echo err1 >&2; printf "a\\000b\\377"; echo err2 >&2; exit 2'],
                        job_id=jid("kept"))).job_id
    await wait_until(lambda: final_on_host(transport, job))
    # beside the state file, byte for byte (a NUL, a byte that is not UTF-8, no final newline)
    r = await transport.run(f"od -An -v -tx1 {B}/jobs/{job}.out; echo :; cat {B}/jobs/{job}.err", check=True)
    hex_out, err = r.stdout.split(":\n")
    assert bytes.fromhex("".join(hex_out.split())) == b"out1\na\x00b\xff"
    assert err == "err1\nerr2\n"
    assert await collect(transport, job) == b"out1\na\x00b\xff"
    assert await collect(transport, job, stream=Stream.STDERR) == b"err1\nerr2\n"
    assert await collect(transport, job, tail_lines=1) == b"a\x00b\xff"  # a last line without its newline
    assert await collect(transport, job, stream=Stream.STDERR, tail_lines=1) == b"err2\n"
    assert await collect(transport, job, tail_bytes=3) == b"\x00b\xff"
    assert await collect(transport, job, tail_lines=0) == b""
    assert await collect(transport, job, tail_lines=50) == b"out1\na\x00b\xff"


async def test_a_huge_output_is_read_from_its_end_in_bounded_reads(host: LabHost, store: AsyncStore,
                                                                   transport: SSHTransport) -> None:
    # 10 GiB of output that takes no disk: the job extends its own stdout (sparse), then appends
    size = 10 << 30
    job = (await submit(transport, store, host.target,
                        ["sh", "-c", f"echo first; truncate -s {size} /proc/self/fd/1 && echo && "
                                     "echo next-to-last && echo last"], job_id=jid("huge"))).job_id
    try:
        await wait_until(lambda: final_on_host(transport, job))
        t = Counting(transport)
        assert await collect(t, job, tail_lines=2) == b"next-to-last\nlast\n"
        assert await collect(t, job, tail_bytes=5) == b"last\n"
        bound = CHUNK * 3 // 2  # one chunk, base64-encoded in lines, and the header
        assert max(t.answers) <= bound
        assert sum(t.answers) < 4 * bound, "a tail must read a few chunks, never the whole output"
        # from the start: chunk by chunk, each one bounded, stopped early by the reader
        t.answers.clear()
        chunks = read_output(t, job)
        first = await anext(chunks)
        second = await anext(chunks)
        await chunks.aclose()
        assert first.startswith(b"first\n\x00\x00")
        assert (len(first), len(second)) == (CHUNK, CHUNK)
        assert max(t.answers) <= bound
        assert len(t.answers) == 3  # the state, then one round trip per chunk
        # lines longer than the look-back: its start, and a "not complete" answer
        offset, complete = await tail_offset(t, job, 3, lookback=1 << 20)
        assert (offset, complete) == (size + len("\nnext-to-last\nlast\n") - (1 << 20), False)
    finally:
        await transport.run(f"rm -f {B}/jobs/{job}.out")


async def test_a_running_job_is_followed_until_it_ends(host: LabHost, store: AsyncStore,
                                                       transport: SSHTransport) -> None:
    job = jid("follow")
    go = f"{B}/go-{job}"
    await submit(transport, store, host.target,
                 ["sh", "-c", f'echo a; echo warn >&2; while [ ! -e {go} ]; do sleep 0.05; done; echo b'], job_id=job)
    got: list[bytes] = []
    seen_a = asyncio.Event()

    async def follow() -> None:
        async for chunk in read_output(transport, job, follow=True, poll=0.1):
            got.append(chunk)
            if b"".join(got).startswith(b"a\n"):
                seen_a.set()

    follower = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(seen_a.wait(), 15)
        assert not follower.done()
        r = await transport.run(f"cat {B}/jobs/{job}.status", check=True)
        assert '"status":"running"' in r.stdout  # the output came while the job ran
        await transport.run(f"touch {go}", check=True)
        await asyncio.wait_for(follower, 15)  # ends by itself once the job is final
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    assert b"".join(got) == b"a\nb\n"
    assert await collect(transport, job, stream=Stream.STDERR, follow=True) == b"warn\n"


async def test_follow_waits_for_a_job_that_has_not_started(host: LabHost, transport: SSHTransport) -> None:
    job = jid("later")
    follower = asyncio.create_task(collect(transport, job, follow=True, poll=0.1))
    await asyncio.sleep(0)
    try:
        # the wrapper as jobkit's launch starts it, a moment later (no row: the state file is enough)
        await transport.run(f"JOBKIT_OUTPUT=files JOBKIT_BASE_DIR={B} sh {B}/bin/job_wrapper.sh {job} "
                            "sh -c 'echo hello' >/dev/null 2>&1", check=True)
        assert await asyncio.wait_for(follower, 15) == b"hello\n"
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, NoOutput):
            await follower


async def test_a_follow_ends_when_the_wrapper_and_the_job_are_gone(host: LabHost, store: AsyncStore,
                                                                   transport: SSHTransport) -> None:
    job = jid("killed")
    go = f"{B}/go-{job}"
    await submit(transport, store, host.target,
                 ["sh", "-c", f"echo a; while [ ! -e {go} ]; do sleep 0.05; done; echo b; exec sleep 60"], job_id=job)
    got: list[bytes] = []

    async def follow() -> None:
        async for chunk in read_output(transport, job, follow=True, poll=0.1):
            got.append(chunk)

    def has(text: bytes) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return b"".join(got) == text
        return check

    await wait_until(lambda: exists(transport, f"{B}/jobs/{job}.status"))
    state = json.loads((await transport.run(f"cat {B}/jobs/{job}.status", check=True)).stdout)
    follower = asyncio.create_task(follow())
    try:
        await wait_until(has(b"a\n"))
        # the wrapper dies without a record; the job lives on and still writes: still followed
        await transport.run(f"kill -s KILL {state['wrapper_pid']}", check=True)
        await transport.run(f"touch {go}", check=True)
        await wait_until(has(b"a\nb\n"))
        assert not follower.done()
        await transport.run(f"kill -s KILL {state['pid']}", check=True)
        await asyncio.wait_for(follower, 15)  # nothing can write it any more
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await transport.run(f"kill -s KILL -- -{state['pgid']} 2>/dev/null || kill -s KILL -{state['pgid']}; true")
    assert b"".join(got) == b"a\nb\n"


async def test_a_job_without_output_says_why(host: LabHost, transport: SSHTransport) -> None:
    nothing = jid("nothing")
    with pytest.raises(NoOutput, match=r"has not started on .* yet"):
        await collect(transport, nothing)
    fenced = jid("fenced")
    await TmuxBackend().fence(transport, fenced, None, timeout=10)
    for follow in (False, True):
        with pytest.raises(NoOutput, match="never started"):
            await collect(transport, fenced, follow=follow)
    plain = jid("plain")  # a wrapper told nothing about output: the output went to its own stdout
    await transport.run(f"JOBKIT_BASE_DIR={B} sh {B}/bin/job_wrapper.sh {plain} echo hi >/dev/null 2>&1", check=True)
    for follow in (False, True):
        with pytest.raises(NoOutput, match="no output kept"):
            await collect(transport, plain, follow=follow, stream=Stream.STDERR)
