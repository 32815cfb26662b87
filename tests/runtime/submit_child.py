"""A runner that submits one job and dies (SIGKILL, nothing cleaned up) at a chosen boundary of
the submit's saga. Used by test_saga_crashes.py:

    python -m tests.runtime.submit_child STORE_DB HOST JOB_ID POINT [fail-start]

With ``fail-start`` the start step fails before its command is sent (the connection cannot be
made), so the submit walks its saga back at once: POINT may then be a boundary of that walk-back
("compensating", "undone:STEP", "compensated:STEP").
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from jobkit.runner import submit
from jobkit.store import AsyncStore, Store
from jobkit.transport_ssh import SSHTransport
from tests.runtime.transports import StartNeverSent


def main() -> None:
    store_db, host, job_id, point = sys.argv[1:5]
    fail_start = sys.argv[5:6] == ["fail-start"]
    store = AsyncStore(Store(Path(store_db)))
    spec = store.sync.host(host)

    def checkpoint(at: str) -> None:
        if at == point:
            os.kill(os.getpid(), signal.SIGKILL)

    async def go() -> None:
        t = SSHTransport(spec)
        try:
            await submit(StartNeverSent(t) if fail_start else t, store, host, ["sh", "-c", "exit 0"],  # type: ignore[arg-type]
                         job_id=job_id, base_dir=spec.base_dir, checkpoint=checkpoint)
        finally:
            await t.close()

    asyncio.run(go())
    print("submitted")


if __name__ == "__main__":
    main()
