"""SLURM fault injectors restore the cluster; the S- clauses pass with jobkit's backend; the
broken backends fail theirs (the teeth). On the session's shared lab cluster."""

from __future__ import annotations

import asyncio

import pytest

from jobkit.conformance.runner import FAIL, NA, PASS
from jobkit.conformance.slurm import BROKEN, S_CLAUSES, SlurmTarget, run_clause
from jobkit.faults.slurm import SlurmFault, inject_slurm, wait_cluster_ready
from jobkit.lab import LabHost
from jobkit.lab.slurm import Cluster

pytestmark = [pytest.mark.slurm, pytest.mark.container]


def _target(host: LabHost) -> SlurmTarget:
    return SlurmTarget(host.target, host.spec, host.extra["cluster"])


@pytest.mark.parametrize(("fault", "probe", "broken_says"), [
    (SlurmFault.SLURMCTLD_STOPPED, "squeue -h", "Unable to contact slurm controller"),
    (SlurmFault.SLURMDBD_STOPPED, "sacct -n -X", "database"),
])
def test_a_daemon_fault_is_real_and_restored(slurm_host: LabHost, fault: SlurmFault, probe: str,
                                             broken_says: str) -> None:
    cluster: Cluster = slurm_host.extra["cluster"]
    inj = inject_slurm(fault, cluster)
    try:
        rc, out = cluster.exec("ctl", probe, user="jobkit", timeout=60)
        assert rc != 0, out
        assert broken_says in out
    finally:
        inj.restore()
    rc, out = cluster.exec("ctl", probe, user="jobkit")
    assert rc == 0, out
    wait_cluster_ready(cluster, 5)


def test_the_login_node_paused_and_back(slurm_host: LabHost) -> None:
    cluster: Cluster = slurm_host.extra["cluster"]
    inj = inject_slurm(SlurmFault.LOGIN_UNREACHABLE, cluster)
    try:
        cluster.containers["ctl"].reload()
        assert cluster.containers["ctl"].status == "paused"
    finally:
        inj.restore()
    cluster.containers["ctl"].reload()
    assert cluster.containers["ctl"].status == "running"


@pytest.mark.parametrize("cid", [c.id for c in S_CLAUSES if c.id != "S-3"])
def test_s_clause_passes(slurm_host: LabHost, cid: str) -> None:
    c = next(c for c in S_CLAUSES if c.id == cid)
    r = asyncio.run(run_clause(c, _target(slurm_host)))
    assert r.outcome == PASS, f"{r.message}\n" + "\n".join(r.evidence)
    wait_cluster_ready(slurm_host.extra["cluster"], 30)  # the clause left the cluster as it found it


#: not applicable on slurm-noacct: no accounting (S-2, S-5), one node (S-8)
NOACCT_NA = {"S-2", "S-5", "S-8"}


@pytest.mark.parametrize("cid", [c.id for c in S_CLAUSES if c.id != "S-3"])
def test_s_clause_on_a_cluster_without_accounting(noacct_host: LabHost, cid: str) -> None:
    c = next(c for c in S_CLAUSES if c.id == cid)
    r = asyncio.run(run_clause(c, _target(noacct_host)))
    assert r.outcome == (NA if cid in NOACCT_NA else PASS), f"{r.outcome}: {r.message}\n" + "\n".join(r.evidence)
    wait_cluster_ready(noacct_host.extra["cluster"], 30)


def test_absent_is_completed_fails_s2(slurm_host: LabHost) -> None:
    cls, cid = BROKEN["absent-is-completed"]
    c = next(c for c in S_CLAUSES if c.id == cid)
    r = asyncio.run(run_clause(c, _target(slurm_host), cls()))
    assert r.outcome == FAIL, r
    assert "completed from absence" in r.message


@pytest.mark.slow
def test_s3_passes_and_timeout_is_completed_fails_it(slurm_host: LabHost, noacct_host: LabHost) -> None:
    """At once (each waits for a one-minute limit): S-3 on both clusters, and the broken backend
    on the cluster with accounting."""
    cls, cid = BROKEN["timeout-is-completed"]
    c = next(c for c in S_CLAUSES if c.id == cid)

    async def all_three() -> tuple[str, str, str]:
        good, bad, noacct = await asyncio.gather(run_clause(c, _target(slurm_host)),
                                                 run_clause(c, _target(slurm_host), cls()),
                                                 run_clause(c, _target(noacct_host)))
        return good.outcome, bad.outcome, noacct.outcome

    assert asyncio.run(all_three()) == (PASS, FAIL, PASS)


def test_a_batch_of_submits_is_one_round_trip_and_idempotent(slurm_host: LabHost) -> None:
    import secrets

    from jobkit.backends.base import LaunchRequest, LaunchState
    from jobkit.backends.slurm import SlurmBackend
    from jobkit.transport_ssh import SSHTransport

    async def go() -> tuple[list[object], list[object], list[str]]:
        t = SSHTransport(slurm_host.spec)
        try:
            tag = secrets.token_hex(3)
            reqs = [LaunchRequest(f"bt{tag}-{i}", ["sh", "-c", f"exit {i}"], token=secrets.token_hex(8))
                    for i in range(5)]
            first = await SlurmBackend().launch_many(t, reqs, timeout=60)
            again = await SlurmBackend().launch_many(t, reqs, timeout=60)
            names = (await t.run(f"squeue -h -t all -n {','.join(r.job_id for r in reqs)} -o %j", timeout=30)).stdout
            return list(first), list(again), sorted(names.split())
        finally:
            await t.close()

    first, again, names = asyncio.run(go())
    assert [o.state for o in first] == [LaunchState.LAUNCHED] * 5, first  # type: ignore[attr-defined]
    assert all(o.scheduler_id for o in first), first  # type: ignore[attr-defined]
    assert [o.state for o in again] == [LaunchState.ALREADY] * 5, again  # type: ignore[attr-defined]
    assert [o.scheduler_id for o in again] == [o.scheduler_id for o in first]  # type: ignore[attr-defined]
    assert len(names) == 5, names  # each submitted once
