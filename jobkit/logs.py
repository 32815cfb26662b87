"""A job's output, read from its host in bounded ranges.

The wrapper keeps a job's stdout and stderr beside its state file (``<base>/jobs/<id>.out`` and
``<id>.err``, wrapper/README.md); any backend that runs jobs for jobkit uses the same two paths.
This module reads them over a :class:`~jobkit.transport.Transport`: every round trip asks for
one range of at most :data:`CHUNK` bytes (``dd`` on whole blocks, encoded so that any byte
survives the transport's text channel), and the same answer says how the job is doing on the
host (the file's size, the state file's status, whether its wrapper is alive, whether the id was
fenced), so following a job costs one round trip per poll.

It must never pull a whole output file in one read: a 10 GB output is read from its end for a
tail (by blocks, a bounded look-back for lines) and streamed in chunks otherwise, with memory
bounded by a few chunks whatever the file's size.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from enum import StrEnum

from jobkit.errors import JobkitError
from jobkit.ids import validate_id
from jobkit.remote import base_dir_word
from jobkit.transport import CommandResult, Transport

__all__ = ["CHUNK", "TAIL_LOOKBACK", "NoOutput", "OutputState", "Stream", "output_state", "read_output",
           "read_range", "tail_offset"]

#: the most bytes one round trip asks for
CHUNK = 1 << 20
#: how far back from the end ``tail_lines`` looks for the start of its lines
TAIL_LOOKBACK = 64 << 20
#: ``dd`` block size: reads start on a block and the few bytes before the offset are dropped here
_BLOCK = 4096
#: the first look-back for lines: most tails are in the last 64 KiB
_FIRST_WINDOW = 64 << 10
#: how long a read in flight may take to finish when the reader is stopped
_STOP_GRACE = 2.0


class Stream(StrEnum):
    """Which of the job's outputs: the file's suffix on the host."""

    STDOUT = "out"
    STDERR = "err"


class NoOutput(JobkitError):
    """The host has no output file for this job: it never started (fenced), has not started
    yet, or ran without its output kept (``JOBKIT_OUTPUT`` unset: another client, or a wrapper
    older than the output files)."""


@dataclass(frozen=True)
class OutputState:
    """What one round trip found on the host besides the data."""

    size: int | None  # the output file's size; None when there is no such file
    status: str | None  # the state file's status (running, completed, failed); None without one
    wrapper_alive: bool | None  # the wrapper that claimed the id still runs; None when unknown
    job_alive: bool | None  # the job's process (state file pid + start time) still runs; None when unknown
    claim: str | None  # "wrapper" (claimed by a wrapper), "fence" (never started), None (unclaimed)

    @property
    def final(self) -> bool:
        return self.status in ("completed", "failed")

    @property
    def over(self) -> bool:
        """Nothing will write the output any more: the job ended (its final state is written, or
        its wrapper and its process are gone), or it never started (fenced)."""
        return (self.final or self.claim == "fence"
                or (self.claim == "wrapper" and self.wrapper_alive is False and self.job_alive is not True))


_HEADER = re.compile(r"jobkit-output size=(?P<size>\d+|-) status=(?P<status>[a-z]+|-) "
                     r"wrapper=(?P<wrapper>alive|gone|-) job=(?P<job>alive|gone|-) "
                     r"claim=(?P<claim>wrapper|fence|-) enc=(?P<enc>base64|hex)")


def _script(job_id: str, stream: Stream, base_dir: str | None, offset: int, length: int) -> str:
    """One round trip: the header line, then the bytes [offset, offset + length) of the output
    file, whole blocks from the one holding ``offset`` (the caller drops what is before it)."""
    validate_id(job_id)
    skip, before = divmod(offset, _BLOCK)
    count = -(-(before + length) // _BLOCK) if length > 0 else 0
    return "\n".join([
        f"b={base_dir_word(base_dir)}; d=\"$b/jobs\"; id={job_id}",
        f"f=\"$d/$id.{stream.value}\"; st=\"$d/$id.status\"; lg=\"$d/$id.wrapper.log\"",
        # Liveness is looked at first and what the wrapper and the job wrote after it: a process
        # seen gone has written all it will, so the state file, the output's size and its bytes
        # read afterwards are complete. (Read in the other order, a quick job could start, write
        # and end between the reads: no output file, no state file, wrapper gone -> "ended before
        # starting it", which was false.)
        "c=; { read -r c <\"$lg\"; } 2>/dev/null; claim=-",
        "case $c in 'jobkit-fence '*) claim=fence ;; *) [ ! -e \"$lg\" ] || claim=wrapper ;; esac",
        "line=; { read -r line <\"$st\"; } 2>/dev/null",
        "w=$(printf '%s\\n' \"$line\" | sed -n 's/.*\"wrapper_pid\": *\\([0-9][0-9]*\\).*/\\1/p')",
        "ws=$(printf '%s\\n' \"$line\" | sed -n 's/.*\"wrapper_start\": *\\([0-9][0-9]*\\).*/\\1/p')",
        # without a state file yet, the claim line names the wrapper: jobkit-wrapper[PID] ID: claimed (start N)
        "if [ -z \"$w\" ] && [ \"$claim\" = wrapper ]; then",
        "  w=$(printf '%s\\n' \"$c\" | sed -n 's/^jobkit-wrapper\\[\\([0-9][0-9]*\\)\\].*/\\1/p')",
        "  ws=$(printf '%s\\n' \"$c\" | sed -n 's/.*claimed (start \\([0-9][0-9]*\\)).*/\\1/p')",
        "fi",
        "jp=$(printf '%s\\n' \"$line\" | sed -n 's/.*\"pid\": *\\([0-9][0-9]*\\).*/\\1/p')",
        "js=$(printf '%s\\n' \"$line\" | sed -n 's/.*\"proc_start\": *\\([0-9][0-9]*\\).*/\\1/p')",
        # PID START -> alive: that pid is still that process (same /proc start time), not a zombie
        "alive() { [ -n \"$1\" ] && [ -n \"$2\" ] || { echo -; return; }; l=; "
        "{ read -r l </proc/\"$1\"/stat; } 2>/dev/null; set -f; set -- \"$2\" ${l##*') '}; set +f; "
        "if [ \"$#\" -ge 21 ] && [ \"$2\" != Z ]; then a=$1; shift 20; [ \"$1\" != \"$a\" ] || "
        "{ echo alive; return; }; fi; echo gone; }",
        "wa=$(alive \"$w\" \"$ws\"); ja=$(alive \"$jp\" \"$js\")",
        "line=; { read -r line <\"$st\"; } 2>/dev/null",
        "s=$(printf '%s\\n' \"$line\" | sed -n 's/.*\"status\": *\"\\([a-z]*\\)\".*/\\1/p')",
        "size=-; if [ -f \"$f\" ]; then size=$(ls -lnL -- \"$f\" 2>/dev/null | awk '{print $5; exit}'); "
        "case $size in '' | *[!0-9]*) size=- ;; esac; fi",
        "if command -v base64 >/dev/null 2>&1; then enc=base64; else enc=hex; fi",
        "echo \"jobkit-output size=$size status=${s:--} wrapper=$wa job=$ja claim=$claim enc=$enc\"",
        *(["if [ \"$size\" != - ]; then",
           f"  if [ $enc = base64 ]; then dd if=\"$f\" bs={_BLOCK} skip={skip} count={count} 2>/dev/null | base64",
           f"  else dd if=\"$f\" bs={_BLOCK} skip={skip} count={count} 2>/dev/null | od -An -v -tx1; fi",
           "fi"] if count else []),
    ])


async def _finished(call: Awaitable[CommandResult]) -> CommandResult:
    """Await ``call``; when the caller is cancelled meanwhile (Ctrl-C on a follow), let the call
    finish first, for :data:`_STOP_GRACE` seconds at most, so that stopping never leaves a
    channel half-opened on a connection that is about to close; then stop."""
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task}, timeout=_STOP_GRACE)
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: whatever it was, the caller stops
        raise


def _parse(host: str, text: str) -> tuple[OutputState, bytes, str]:
    head, _, body = text.partition("\n")
    m = _HEADER.fullmatch(head.strip())
    if m is None:
        raise JobkitError(f"unexpected answer while reading a job's output: {head[:200]!r}", host=host)
    try:
        data = (base64.b64decode("".join(body.split()), validate=True) if m["enc"] == "base64"
                else bytes.fromhex("".join(body.split())))
    except (binascii.Error, ValueError) as exc:
        raise JobkitError(f"the job's output arrived garbled ({exc})", host=host) from exc
    state = OutputState(None if m["size"] == "-" else int(m["size"]), None if m["status"] == "-" else m["status"],
                        None if m["wrapper"] == "-" else m["wrapper"] == "alive",
                        None if m["job"] == "-" else m["job"] == "alive",
                        None if m["claim"] == "-" else m["claim"])
    return state, data, m["enc"]


async def read_range(transport: Transport, job_id: str, offset: int, length: int, *,
                     stream: Stream = Stream.STDOUT, base_dir: str | None = None,
                     timeout: float = 10.0) -> tuple[OutputState, bytes]:
    """The bytes ``[offset, offset + length)`` of the job's output (fewer at its end; at most
    :data:`CHUNK` are asked for) and what the host says about the job, in one round trip."""
    if offset < 0 or length < 0:
        raise ValueError("offset and length must be >= 0")
    length = min(length, CHUNK)
    r = await _finished(transport.run(_script(job_id, stream, base_dir, offset, length), timeout=timeout))
    if r.exit_status != 0:
        raise JobkitError(f"cannot read the output of {job_id}", host=transport.host_name, exit_status=r.exit_status,
                          stdout=r.stdout[:2000], stderr=r.stderr)
    state, data, _enc = _parse(transport.host_name, r.stdout)
    return state, data[offset % _BLOCK:][:length]


async def output_state(transport: Transport, job_id: str, *, stream: Stream = Stream.STDOUT,
                       base_dir: str | None = None, timeout: float = 10.0) -> OutputState:
    """How the job's output and the job are on the host, without any data."""
    state, _ = await read_range(transport, job_id, 0, 0, stream=stream, base_dir=base_dir, timeout=timeout)
    return state


def _no_output(job_id: str, host: str, stream: Stream, state: OutputState) -> NoOutput:
    what = "stdout" if stream is Stream.STDOUT else "stderr"
    if state.claim == "fence":
        return NoOutput(f"job {job_id} never started on {host} (its id is fenced there): it has no output", host=host)
    if state.status is not None:
        return NoOutput(f"no output kept for job {job_id} on {host}: its {what} was not written to a file "
                        "(it ran without JOBKIT_OUTPUT=files: submitted by another client or before jobkit kept "
                        "output)", host=host)
    if state.claim == "wrapper" and state.wrapper_alive is False:
        return NoOutput(f"no output for job {job_id} on {host}: its wrapper ended before starting it (see "
                        f"<base>/jobs/{job_id}.wrapper.log there)", host=host)
    return NoOutput(f"job {job_id} has not started on {host} yet: no output (--follow waits for it)", host=host)


async def tail_offset(transport: Transport, job_id: str, lines: int, *, stream: Stream = Stream.STDOUT,
                      base_dir: str | None = None, timeout: float = 10.0,
                      lookback: int = TAIL_LOOKBACK) -> tuple[int, bool]:
    """Where the last ``lines`` lines of the output begin, found by reading back from the end in
    chunks, never further than ``lookback`` bytes: returns (offset, complete); ``complete`` is
    false when the lines did not all fit in the look-back (the offset is then its start).
    Raises :class:`NoOutput` when there is no output file."""
    if lines < 0:
        raise ValueError("lines must be >= 0")
    state = await output_state(transport, job_id, stream=stream, base_dir=base_dir, timeout=timeout)
    if state.size is None:
        raise _no_output(job_id, transport.host_name, stream, state)
    size = state.size
    if size == 0:
        return 0, True
    if lines == 0:
        return size, True
    floor = max(0, size - lookback)
    end, window, need, last = size, _FIRST_WINDOW, lines, True
    while end > floor:
        start = max(floor, (end - window) // _BLOCK * _BLOCK)
        data = b""
        while len(data) < end - start:  # one window, in chunks from its start
            _, piece = await read_range(transport, job_id, start + len(data), end - start - len(data),
                                        stream=stream, base_dir=base_dir, timeout=timeout)
            if not piece:
                break
            data += piece
        data = data[:end - start]
        if last:  # a final line without its newline is a line too
            if data.endswith(b"\n"):
                need += 1
            last = False
        pos = len(data)
        while need > 0:
            pos = data.rfind(b"\n", 0, pos)
            if pos < 0:
                break
            need -= 1
        if need == 0:
            return start + pos + 1, True
        end, window = start, min(window * 4, CHUNK)
    return floor, floor == 0


async def read_output(transport: Transport, job_id: str, *, stream: Stream = Stream.STDOUT,
                      base_dir: str | None = None, tail_lines: int | None = None, tail_bytes: int | None = None,
                      follow: bool = False, poll: float = 0.5, timeout: float = 10.0,
                      lookback: int = TAIL_LOOKBACK) -> AsyncIterator[bytes]:
    """The job's output as it is on the host, in chunks of at most :data:`CHUNK` bytes: all of
    it, or its last ``tail_lines`` lines or ``tail_bytes`` bytes.

    Without ``follow`` it stops at the end the file had when reading began. With ``follow`` it
    waits for the job to start when it has not yet, then keeps reading as the job writes (one
    round trip every ``poll`` seconds while nothing new comes) until nothing will write the
    output any more (the job's final state is written, its wrapper is gone, or its id was fenced)
    and a last read finds nothing new. Raises :class:`NoOutput` when the host keeps no output
    for the job (and, without ``follow``, when it has not started yet), and the transport's
    errors (:class:`~jobkit.errors.HostUnreachable`, ...) as they are. Close the iterator
    (``aclose()``, or leave an ``async for``) to stop early."""
    if tail_lines is not None and tail_bytes is not None:
        raise ValueError("give tail_lines or tail_bytes, not both")
    host = transport.host_name
    state = await output_state(transport, job_id, stream=stream, base_dir=base_dir, timeout=timeout)
    while state.size is None:
        if not follow or state.over or state.status is not None:
            raise _no_output(job_id, host, stream, state)
        await asyncio.sleep(poll)  # not started yet: wait for its output file
        state = await output_state(transport, job_id, stream=stream, base_dir=base_dir, timeout=timeout)
    size = state.size
    if tail_bytes is not None:
        offset = max(0, size - tail_bytes)
    elif tail_lines is not None:
        offset, _complete = await tail_offset(transport, job_id, tail_lines, stream=stream, base_dir=base_dir,
                                              timeout=timeout, lookback=lookback)
    else:
        offset = 0
    stop_at = None if follow else size
    idle_after_end = False  # a read after the job was over found nothing: the output is complete
    while True:
        want = CHUNK if stop_at is None else min(CHUNK, stop_at - offset)
        if want <= 0:
            return
        state, data = await read_range(transport, job_id, offset, want, stream=stream, base_dir=base_dir,
                                       timeout=timeout)
        if data:
            offset += len(data)
            idle_after_end = False
            yield data
            continue
        if stop_at is not None:
            return  # the file shrank under us: nothing more to give
        if state.size is None and state.over:
            return  # the file went away after the job: what was there has been given
        if state.over:
            if idle_after_end:
                return
            idle_after_end = True  # over, and nothing new: one more look after a poll, then done
        else:
            idle_after_end = False  # alive again to a later look (a job the wrapper left running)
        await asyncio.sleep(poll)
