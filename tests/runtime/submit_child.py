"""A runner that submits one job and dies (SIGKILL, nothing cleaned up) at a chosen boundary of
the submit's saga. Used by test_saga_crashes.py:

    python -m tests.runtime.submit_child STORE_DB HOST JOB_ID POINT
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


def main() -> None:
    store_db, host, job_id, point = sys.argv[1:5]
    store = AsyncStore(Store(Path(store_db)))
    spec = store.sync.host(host)

    def checkpoint(at: str) -> None:
        if at == point:
            os.kill(os.getpid(), signal.SIGKILL)

    async def go() -> None:
        t = SSHTransport(spec)
        await submit(t, store, host, ["sh", "-c", "exit 0"], job_id=job_id, base_dir=spec.base_dir,
                     checkpoint=checkpoint)

    asyncio.run(go())
    print("submitted")


if __name__ == "__main__":
    main()
