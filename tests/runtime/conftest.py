"""Runtime integration tests run on the embedded `local` target and on every offline Docker
target (those carry the `container` marker)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobkit.lab import Lab, LabHost, offline_targets
from jobkit.store import AsyncStore, Store
from jobkit.transport import CommandResult
from jobkit.transport_ssh import SSHTransport

TARGETS = [pytest.param("local", id="local"),
           *(pytest.param(t, id=t, marks=pytest.mark.container) for t in offline_targets())]


@pytest.fixture(params=TARGETS)
def host(request: pytest.FixtureRequest, jobkit_lab: Lab) -> LabHost:
    return jobkit_lab.start(request.param)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AsyncStore]:
    s = Store(tmp_path / "store.db")
    yield AsyncStore(s)
    s.close()


@pytest.fixture
async def transport(host: LabHost, store: AsyncStore) -> AsyncIterator[SSHTransport]:
    store.sync.add_host(host.spec)
    t = SSHTransport(host.spec)
    yield t
    await t.close()


class LateAnswers:
    """A transport whose answers arrive ``delay`` seconds after the host gave them (a slow
    network, a loaded client): ``answered`` is set when the host has answered."""

    def __init__(self, real: SSHTransport, delay: float) -> None:
        self.real, self.delay = real, delay
        self.answered = asyncio.Event()

    @property
    def host_name(self) -> str:
        return self.real.host_name

    async def run(self, command: str, **kw: object) -> CommandResult:
        r = await self.real.run(command, **kw)  # type: ignore[arg-type]
        self.answered.set()
        await asyncio.sleep(self.delay)
        return r

    async def close(self) -> None:
        return None


async def wait_until(predicate: Any, seconds: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def processes_gone(t: Any, *procs: tuple[Any, Any]) -> bool:
    """None of these (pid, /proc start time) processes is alive: gone, a zombie, or its pid now
    names a later process (pids wrap at pid_max). A start time of None matches any process."""
    checks = []
    for pid, start in procs:
        checks.append(f"l=; {{ read -r l </proc/{int(pid)}/stat; }} 2>/dev/null && {{ set -- ${{l##*') '}}; "
                      f"[ \"$1\" != Z ] && {{ [ -z '{start or ''}' ] || [ \"${{20}}\" = '{start or ''}' ]; }} && "
                      "echo alive; }")
    r = await t.run("; ".join(checks) + "; true")
    return "alive" not in r.stdout
