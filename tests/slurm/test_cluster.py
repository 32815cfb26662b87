"""jobkit on a real SLURM cluster of the lab, through the CLI: submit, status, reconcile, cancel,
logs; exit codes; a time limit; a node going down (requeue); a job purged from the controller
(accounting answers); a cluster without accounting. One cluster per session; the slow time-limit
job (enforced every 30 s after its 1 minute) is submitted after the requeue test (a requeue would
restart its clock) and checked last, while the other tests run."""

from __future__ import annotations

import re
import time

import pytest

from tests.slurm.conftest import Cli

pytestmark = [pytest.mark.slurm, pytest.mark.container]


def test_the_lab_cluster_is_ready_with_two_idle_nodes(slurm_cli: Cli) -> None:
    out = slurm_cli.sh("ctl", "sinfo -h -N -o '%N %t'", user="jobkit")
    assert sorted(out.split("\n")[:2]) == ["c1 idle", "c2 idle"], out
    assert "jobkitlab" in slurm_cli.sh("ctl", "sacctmgr -n -P list cluster format=cluster")
    assert slurm_cli.host.ready_seconds < 60


def test_submit_status_logs_and_exit_codes(slurm_cli: Cli) -> None:
    c = slurm_cli
    c.run("submit", "cl", "--id", "ok1", "--cpus", "1", "--mem", "100M", "--", "sh", "-c", "echo hello; exit 0")
    c.run("submit", "cl", "--id", "bad1", "--", "sh", "-c", "echo oops >&2; exit 7")
    c.run("submit", "cl", "--id", "sig1", "--", "sh", "-c", "kill -USR1 $$")
    ok = c.wait("ok1", lambda j: j["status"] == "completed")
    assert (ok["status"], ok["exit"]) == ("completed", 0), ok
    assert ok["sid"]
    assert ok["sid"].isdigit()
    bad = c.wait("bad1", lambda j: j["status"] == "failed")
    assert (bad["status"], bad["exit"], bad["conflict"]) == ("failed", 7, False), bad
    sig = c.wait("sig1", lambda j: j["status"] == "failed")
    assert (sig["status"], sig["signal"]) == ("failed", "USR1"), sig
    _, out = c.run("status")
    assert re.search(r"ok1 .*completed +0", out), out
    assert re.search(r"bad1 .*failed +7", out), out
    assert c.run("logs", "ok1")[1].strip() == "hello"
    assert c.run("logs", "bad1", "--stderr")[1].strip() == "oops"
    # the job ran on a compute node, its files on the shared home
    node = c.sh("ctl", f"squeue -h -t all -j {ok['sid']} -o %N || sacct -n -X -j {ok['sid']} -o NodeList",
                user="jobkit").strip()
    assert node in ("c1", "c2"), node


def test_bad_resources_are_one_line_and_exit_2(slurm_cli: Cli) -> None:
    rc, out = slurm_cli.run("submit", "cl", "--time", "soon", "--", "true", ok=False)
    assert rc == 2
    assert out.strip().startswith("jobkit: error:")
    assert "\n" not in out.strip()


def test_cancel_is_recorded_cancelled(slurm_cli: Cli) -> None:
    c = slurm_cli
    c.run("submit", "cl", "--id", "can1", "--", "sleep", "300")
    assert c.wait("can1", lambda j: j["status"] == "running")["status"] == "running"
    c.run("cancel", "can1")
    j = c.wait("can1", lambda j: j["status"] == "cancelled")
    assert j["status"] == "cancelled", j
    assert j["signal"] in ("TERM", None), j


def test_cancel_with_the_controller_down_says_so_and_cancels_nothing(slurm_cli: Cli) -> None:
    from jobkit.faults.slurm import SlurmFault, inject_slurm

    c = slurm_cli
    c.run("submit", "cl", "--id", "cd1", "--", "sleep", "300")
    assert c.wait("cd1", lambda j: j["status"] == "running")["status"] == "running"
    inj = inject_slurm(SlurmFault.SLURMCTLD_STOPPED, c.cluster)
    try:
        rc, out = c.run("cancel", "cd1", ok=False)
    finally:
        inj.restore()
    assert rc == 1, out
    assert "controller does not answer" in out, out
    assert "nothing was cancelled" in out, out
    sid = c.job("cd1")["sid"]
    assert c.sh("ctl", f"squeue -h -j {sid} -o %T", user="jobkit").strip() == "RUNNING"
    j = c.wait("cd1", lambda j: j["status"] == "running")
    assert j["status"] == "running", j
    c.run("cancel", "cd1")
    assert c.wait("cd1", lambda j: j["status"] == "cancelled")["status"] == "cancelled"


def test_node_down_requeues_the_job_back_to_pending(slurm_cli: Cli) -> None:
    c = slurm_cli
    c.run("submit", "cl", "--id", "rq1", "--", "sleep", "300")
    j = c.wait("rq1", lambda j: j["status"] == "running")
    assert j["status"] == "running", j
    node = c.sh("ctl", f"squeue -h -j {j['sid']} -o %N").strip()
    try:
        c.sh("ctl", f"scontrol update nodename={node} state=down reason=jobkit-test")
        j = c.wait("rq1", lambda j: j["status"] == "pending")
        assert j["status"] == "pending", j
        assert j["history"][-2:] == ["running", "pending"], j
    finally:
        restore_node(c, node)
    # it runs again (SLURM holds a requeued job back for a while: BeginTime; let it go now)
    c.sh("ctl", f"scontrol update jobid={j['sid']} starttime=now")
    j = c.wait("rq1", lambda j: j["status"] == "running", seconds=60)
    assert j["status"] == "running", j
    c.run("cancel", "rq1")
    assert c.wait("rq1", lambda j: j["status"] == "cancelled")["status"] == "cancelled"


def restore_node(c: Cli, node: str) -> None:
    """The node back in service (ReturnToService=2 may have done it already)."""
    c.cluster.exec("ctl", f"scontrol update nodename={node} state=resume")
    deadline = time.monotonic() + 30
    while (st := c.sh("ctl", f"sinfo -h -n {node} -o %t").strip()) not in ("idle", "mix", "alloc"):
        assert time.monotonic() < deadline, f"{node} stays {st}"
        time.sleep(0.5)


def test_time_limit_submitted_first(slurm_cli: Cli) -> None:
    """Submits the job that must hit its 1-minute limit; test_time_limit_is_timeout checks it."""
    slurm_cli.run("submit", "cl", "--id", "tl1", "--time", "1", "--", "sleep", "600")
    j = slurm_cli.wait("tl1", lambda j: j["status"] == "running")
    assert j["status"] == "running", j


def test_a_purged_job_is_known_from_accounting(slurm_cli: Cli) -> None:
    c = slurm_cli
    c.run("submit", "cl", "--id", "pg1", "--", "sh", "-c", "exit 3")
    sid = c.job("pg1")["sid"]
    deadline = time.monotonic() + 60
    while True:  # MinJobAge=10 s, purged every 10 s
        rc, out = c.cluster.exec("ctl", f"squeue -h -j {sid}", user="jobkit")
        if rc != 0:
            break
        assert time.monotonic() < deadline, "never purged"
        time.sleep(1)
    assert "Invalid job id" in out
    # a cancel now: the controller no longer knows the job (not an error, not a cancel)
    rc, out = c.run("cancel", "pg1")
    assert "no longer in the controller" in out, out
    assert "nothing to cancel" in out, out
    j = c.wait("pg1", lambda j: j["status"] == "failed")
    assert (j["status"], j["exit"], j["conflict"]) == ("failed", 3, False), j


def test_a_cluster_without_accounting(noacct_cli: Cli) -> None:
    c = noacct_cli
    rc, out = c.cluster.exec("node1", "sacct -n -X", user="jobkit")
    assert rc != 0
    assert "disabled" in out
    c.run("submit", "cl", "--id", "na1", "--", "sh", "-c", "echo fine")
    assert c.wait("na1", lambda j: j["status"] == "completed")["exit"] == 0
    c.run("submit", "cl", "--id", "na2", "--", "sh", "-c", "exit 4")
    # na2 is not reconciled before the controller has purged it: the job completion log answers
    sid = c.job("na2")["sid"]
    deadline = time.monotonic() + 60
    while "Invalid job id" not in c.cluster.exec("node1", f"squeue -h -j {sid}", user="jobkit")[1]:
        assert time.monotonic() < deadline, "never purged"
        time.sleep(1)
    _, out = c.run("reconcile", "--json")
    assert '"accounting": "FAILED"' in out, out
    j = c.job("na2")
    assert (j["status"], j["exit"], j["conflict"]) == ("failed", 4, False), j
    assert c.run("logs", "na1")[1].strip() == "fine"


def test_time_limit_is_timeout(slurm_cli: Cli) -> None:
    j = slurm_cli.wait("tl1", lambda j: j["status"] == "timeout", seconds=150)
    assert j["status"] == "timeout", j
    assert j["history"][-1] == "timeout"
