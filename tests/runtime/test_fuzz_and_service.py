"""Commands run exactly as given (hypothesis), orphans, the per-job log line, the periodic service."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobkit.lab import LabHost
from jobkit.models import JobStatus
from jobkit.reconcile import ReconcileService, reconcile_host
from jobkit.runner import submit
from jobkit.store import AsyncStore, Store
from jobkit.transport_ssh import SSHTransport
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.slow
B = '"$HOME/.jobkit"'
args = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
tricky = st.sampled_from(["$(touch /tmp/pwned-fuzz)", "`id`", "'", '"', "\\", ";", "a b", "\n", "*", "~", "-", "--",
                          "#{pid}", "${HOME}", "é€😀", "\t", "'; DROP TABLE jobs; --"])



@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.one_of(args, tricky), min_size=0, max_size=6))
def test_fuzzed_commands_run_exactly_as_given(local_host: LabHost, tmp_path: Path, argv: list[str]) -> None:
    async def go() -> list[str]:
        store = AsyncStore(Store(tmp_path / f"{uuid.uuid4().hex}.db"))
        store.sync.add_host(local_host.spec)
        t = SSHTransport(local_host.spec)
        job = f"fz-{uuid.uuid4().hex[:10]}"
        out = f"out-{job}.json"
        prog = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"
        await submit(t, store, local_host.target, ["python3", "-c", prog, out, *argv], job_id=job)

        async def done() -> bool:
            r = await t.run(f"cat {B}/jobs/{job}.status 2>/dev/null")
            return '"completed"' in r.stdout or '"failed"' in r.stdout

        await wait_until(done)
        got = await t.run(f"cat \"$HOME\"/{out}", check=True)
        await t.close()
        store.sync.close()
        return list(json.loads(got.stdout))

    assert asyncio.run(go()) == argv
    assert not Path("/tmp/pwned-fuzz").exists()


async def test_orphans_and_one_log_line_per_job(local_host: LabHost, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    store = AsyncStore(Store(tmp_path / "s.db"))
    store.sync.add_host(local_host.spec)
    t = SSHTransport(local_host.spec)
    stranger = f"orphan-{uuid.uuid4().hex[:8]}"
    await t.run(f"sqlite3 {B}/server.db \"INSERT INTO jobs (id) VALUES ('{stranger}')\" && "
                f"{B}/bin/job_wrapper.sh {stranger} true", check=True)
    mine = (await submit(t, store, local_host.target, ["true"], job_id=f"mine-{uuid.uuid4().hex[:8]}")).job_id

    async def recorded() -> bool:
        r = await t.run(f"cat {B}/jobs/{mine}.status 2>/dev/null")
        return '"db":"ok"' in r.stdout and '"completed"' in r.stdout

    await wait_until(recorded)
    with caplog.at_level(logging.INFO, logger="jobkit.reconcile"):
        report = await reconcile_host(t, store, local_host.target)
    assert stranger in report.orphans
    assert mine not in report.orphans
    lines = [r.getMessage() for r in caplog.records if mine in r.getMessage()]
    assert len(lines) == 1
    assert "decided by database" in lines[0]
    assert "state_file=completed" in lines[0]
    await t.close()


async def test_periodic_service_ticks_skips_overlaps_and_stops_cleanly(local_host: LabHost, tmp_path: Path) -> None:
    store = AsyncStore(Store(tmp_path / "svc.db"))
    store.sync.add_host(local_host.spec)
    t = SSHTransport(local_host.spec)
    job_id = f"svc-{uuid.uuid4().hex[:8]}"
    job = (await submit(t, store, local_host.target, ["sh", "-c", "sleep 1"], job_id=job_id)).job_id
    service = ReconcileService(store, lambda name: t, interval=0.3)
    service.start()
    first = asyncio.create_task(service.tick())  # overlapping with the loop's own first tick
    await asyncio.sleep(0)
    await first
    await wait_until(lambda: _final(store, job), seconds=15)
    loop_task = service._task
    assert loop_task is not None
    await service.stop()
    assert loop_task.done()  # stopped: the timer is gone, so no tick can come
    assert service.ticks >= 2
    assert service.skipped >= 1
    await t.close()


async def _final(store: AsyncStore, job: str) -> bool:
    return (await store.call(store.sync.job, job)).status is JobStatus.COMPLETED
