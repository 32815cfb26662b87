"""Fault injectors for the lab's SLURM clusters (:mod:`jobkit.lab.slurm`).

Each :class:`SlurmFault` acts on a started :class:`~jobkit.lab.slurm.Cluster` through ``docker
exec`` (as root on the node concerned), and its handle's ``restore()`` puts the cluster back
and waits until it is ready again (controller answers, every node idle or allocated, accounting
listed). ``restore`` is idempotent; ``with inject_slurm(...)`` restores on every path.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from jobkit.errors import JobkitError
from jobkit.lab.slurm import CLUSTER_NAME, Cluster


class SlurmFault(Enum):
    SLURMCTLD_STOPPED = "slurmctld stopped (squeue: Unable to contact slurm controller)"
    SLURMDBD_STOPPED = "slurmdbd stopped (sacct: no answer from accounting)"
    NODE_DOWN = "the node running a job set DOWN (SLURM requeues the batch job)"
    TIME_LIMIT = "a job's time limit lowered to one minute (it ends TIMEOUT)"
    FOREIGN_SCANCEL = "scancel of the job by someone else (root on the login node)"
    REQUEUE = "scontrol requeue of the job"
    SIGKILL_WRAPPER = "SIGKILL to the job's wrapper inside its allocation"
    PURGE_WHILE_ACCOUNTING_DOWN = ("slurmdbd stopped, then the job ends and is purged from the controller "
                                   "(MinJobAge): neither squeue nor sacct knows it")
    LOGIN_UNREACHABLE = "the login node stops answering (container paused)"

    @property
    def description(self) -> str:
        return str(self.value)


class SlurmFaultError(JobkitError):
    """The fault could not be made or undone: an error of the suite, not of the code under test."""


@dataclass
class InjectedSlurm:
    fault: SlurmFault
    cluster: Cluster
    undo: list[Callable[[], object]] = field(default_factory=list)
    restored: bool = False

    def restore(self, ready_within: float = 60.0) -> None:
        if self.restored:
            return
        self.restored = True
        errors = []
        while self.undo:
            try:
                self.undo.pop()()
            except Exception as exc:
                errors.append(str(exc))
        try:
            wait_cluster_ready(self.cluster, ready_within)
        except JobkitError as exc:
            errors.append(str(exc))
        if errors:
            raise SlurmFaultError(f"{self.fault.name}: the cluster could not be restored: {'; '.join(errors)}")


def _root(cluster: Cluster, node: str, cmd: str, timeout: float = 30.0) -> str:
    rc, out = cluster.exec(node, cmd, timeout=timeout)
    if rc != 0:
        raise SlurmFaultError(f"{node}: {cmd}: exit {rc}: {out.strip()[-500:]}")
    return out


def _poll(what: str, cond: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise SlurmFaultError(f"{what}: not within {seconds:g}s")
        time.sleep(0.2)


def wait_cluster_ready(cluster: Cluster, seconds: float = 60.0) -> None:
    """Controller up, no node down or drained, accounting listed (when the target has it)."""
    login = cluster.layout.login
    check = ("scontrol ping | grep -q UP && ! sinfo -h -N -o %t | grep -qv -E '^(idle|mix|alloc|comp)$'")
    if cluster.layout.accounting:
        check += f" && sacctmgr -n -P list cluster format=cluster | grep -qx {CLUSTER_NAME}"
    _poll("cluster ready again", lambda: cluster.exec(login, check, timeout=10)[0] == 0, seconds)


def job_node(cluster: Cluster, sid: str) -> str:
    return _root(cluster, cluster.layout.login, f"squeue -h -j {sid} -o %N").strip()


def _start_slurmdbd(cluster: Cluster) -> None:
    login = cluster.layout.login
    _root(cluster, login, "pgrep -x slurmdbd >/dev/null || slurmdbd")
    _poll("slurmdbd answers", lambda: cluster.exec(login, "sacctmgr -n list cluster")[0] == 0, 30)


def _start_slurmctld(cluster: Cluster) -> None:
    login = cluster.layout.login
    _root(cluster, login, "pgrep -x slurmctld >/dev/null || slurmctld")
    _poll("slurmctld answers", lambda: cluster.exec(login, "scontrol ping | grep -q UP")[0] == 0, 30)


def inject_slurm(fault: SlurmFault, cluster: Cluster, *, sid: str | None = None, job_id: str | None = None,
                 base_dir: str = "/home/jobkit/.jobkit") -> InjectedSlurm:
    """Make ``fault`` on the cluster (``sid``: the SLURM id of the job it concerns)."""
    inj = InjectedSlurm(fault, cluster)
    login = cluster.layout.login
    try:
        if fault is SlurmFault.SLURMCTLD_STOPPED:
            _root(cluster, login, "pkill -x slurmctld; true")
            _poll("slurmctld gone", lambda: cluster.exec(login, "pgrep -x slurmctld")[0] != 0, 30)
            inj.undo.append(lambda: _start_slurmctld(cluster))
        elif fault in (SlurmFault.SLURMDBD_STOPPED, SlurmFault.PURGE_WHILE_ACCOUNTING_DOWN):
            if not cluster.layout.accounting:
                raise SlurmFaultError(f"{fault.name}: this cluster has no slurmdbd")
            _root(cluster, login, "pkill -x slurmdbd; true")
            _poll("slurmdbd gone", lambda: cluster.exec(login, "pgrep -x slurmdbd")[0] != 0, 30)
            inj.undo.append(lambda: _start_slurmdbd(cluster))
            if fault is SlurmFault.PURGE_WHILE_ACCOUNTING_DOWN:
                _need(sid, fault)
                _root(cluster, login, f"scancel {sid} || true")
                # purged: `squeue -j` says "Invalid job id" (exit 1, as for a controller down)
                _poll("job purged from the controller",
                      lambda: "Invalid job id" in cluster.exec(login, f"squeue -h -j {sid}")[1], 60)
        elif fault is SlurmFault.NODE_DOWN:
            node = job_node(cluster, _need(sid, fault))
            _root(cluster, login, f"scontrol update nodename={node} state=down reason=jobkit-fault")
            inj.undo.append(lambda: cluster.exec(login, f"scontrol update nodename={node} state=resume"))
        elif fault is SlurmFault.TIME_LIMIT:
            _root(cluster, login, f"scontrol update jobid={_need(sid, fault)} timelimit=1")
        elif fault is SlurmFault.FOREIGN_SCANCEL:
            _root(cluster, login, f"scancel {_need(sid, fault)}")
        elif fault is SlurmFault.REQUEUE:
            _root(cluster, login, f"scontrol requeue {_need(sid, fault)}")
        elif fault is SlurmFault.SIGKILL_WRAPPER:
            node = job_node(cluster, _need(sid, fault))
            if job_id is None:
                raise SlurmFaultError("SIGKILL_WRAPPER needs the jobkit id")
            f = f"{base_dir}/jobs/{job_id}.status"
            _root(cluster, node, f"w=$(sed -n 's/.*\"wrapper_pid\":\\([0-9][0-9]*\\).*/\\1/p' {f}); "
                                 "[ -n \"$w\" ] && kill -KILL \"$w\"")
        elif fault is SlurmFault.LOGIN_UNREACHABLE:
            c = cluster.containers[login]
            c.pause()
            inj.undo.append(c.unpause)
        else:  # pragma: no cover - every member is handled above
            raise SlurmFaultError(f"no injector for {fault}")
    except BaseException:
        with contextlib.suppress(Exception):
            inj.restore()
        raise
    return inj


def _need(sid: str | None, fault: SlurmFault) -> str:
    if not sid or not sid.replace("_", "").isdigit():
        raise SlurmFaultError(f"{fault.name} needs the job's SLURM id")
    return sid


@contextlib.contextmanager
def slurm_fault(fault: SlurmFault, cluster: Cluster, **kw: str | None) -> Iterator[InjectedSlurm]:
    inj = inject_slurm(fault, cluster, **kw)  # type: ignore[arg-type]
    try:
        yield inj
    finally:
        inj.restore()
