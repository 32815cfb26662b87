"""SLURM clusters in the lab: the ``slurm`` target (a login/controller node with slurmctld,
slurmdbd on MariaDB and sshd, and two compute nodes running slurmd, one munge key, a named volume
as the cluster's shared ``/home``, a Docker network of their own) and ``slurm-noacct`` (one
container, ``jobcomp/filetxt``, no slurmdbd).

Every container, network and volume made here carries the lab's labels (``jobkit.lab=1``, the
session, the owning process, ``jobkit.lab.cluster``): cleanup removes only what a lab made. Only
the login node's port 22 is published, on 127.0.0.1. *Ready* means: a real SSH login to the
login node succeeded (and the wrapper is deployed on the shared home), ``scontrol ping``
answers, every node is ``idle`` and, with accounting, ``sacctmgr list cluster`` lists it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from jobkit.errors import JobkitError

CLUSTER_NAME = "jobkitlab"
READY_TIMEOUT = 90.0
MIN_JOB_AGE = int(os.environ.get("JOBKIT_SLURM_MIN_JOB_AGE", "10"))


@dataclass(frozen=True)
class Layout:
    """Which containers a SLURM target is made of."""

    accounting: bool
    login: str  # the hostname of the login (controller) node
    computes: tuple[str, ...]  # hostnames of compute-only nodes (empty: the login node computes)

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.computes or (self.login,)


LAYOUTS = {"slurm": Layout(True, "ctl", ("c1", "c2")), "slurm-noacct": Layout(False, "node1", ())}


def is_slurm_target(name: str) -> bool:
    return name in LAYOUTS


@dataclass
class Cluster:
    """The Docker objects of one started cluster."""

    client: Any
    layout: Layout
    labels: dict[str, str]
    network: Any = None
    volume: Any = None
    containers: dict[str, Any] = field(default_factory=dict)  # hostname -> docker container

    def exec(self, node: str, cmd: str, *, user: str = "root", timeout: float = 30.0) -> tuple[int, str]:
        """Run ``cmd`` with sh on ``node`` (as root by default); (exit status, output)."""
        c = self.containers[node]
        r = c.exec_run(["timeout", str(int(timeout)), "sh", "-c", cmd], user=user, demux=False)
        return int(r.exit_code), (r.output or b"").decode("utf-8", "replace")

    def remove(self) -> None:
        for c in list(self.containers.values()):
            with contextlib.suppress(Exception):
                c.remove(force=True)
        self.containers.clear()
        for obj in (self.network, self.volume):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.remove()
        self.network = self.volume = None
        with contextlib.suppress(Exception):
            self.client.close()


class ContainerHandle:
    """The login node's container, with the part of testcontainers' interface the lab uses."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._c = cluster.containers[cluster.layout.login]

    def get_wrapped_container(self) -> Any:
        return self._c

    def get_logs(self) -> tuple[bytes, bytes]:
        return self._c.logs(stdout=True, stderr=False), self._c.logs(stdout=False, stderr=True)

    def get_exposed_port(self, port: int) -> str:
        self._c.reload()
        return str(self._c.ports[f"{port}/tcp"][0]["HostPort"])

    def stop(self) -> None:
        self.cluster.remove()


def start_cluster(client: Any, target: str, image: str, labels: dict[str, str], *, host_key_private: str,
                  authorized_key: str) -> Cluster:
    """Start the containers of ``target`` (not yet ready: see :func:`wait_ready`)."""
    layout = LAYOUTS[target]
    tag = uuid.uuid4().hex[:10]
    labels = {**labels, "jobkit.lab.cluster": tag}
    cluster = Cluster(client, layout, labels)
    try:
        cluster.network = client.networks.create(f"jobkit-slurm-{tag}", driver="bridge", labels=labels)
        cluster.volume = client.volumes.create(f"jobkit-slurm-home-{tag}", labels=labels)
        munge_key = base64.b64encode(os.urandom(1024)).decode()
        common = {"JOBKIT_MUNGE_KEY": munge_key, "JOBKIT_SLURM_ACCT": "1" if layout.accounting else "0",
                  "JOBKIT_SLURM_CONTROLLER": layout.login, "JOBKIT_SLURM_NODES": " ".join(layout.nodes),
                  "JOBKIT_SLURM_CPUS": "2", "JOBKIT_SLURM_MIN_JOB_AGE": str(MIN_JOB_AGE)}
        for host in (layout.login, *layout.computes):
            login = host == layout.login
            env = dict(common, JOBKIT_SLURM_ROLE=("controller" if layout.computes else "single") if login
                       else "compute")
            if login:
                env.update(JOBKIT_HOST_KEY=host_key_private, JOBKIT_AUTHORIZED_KEY=authorized_key)
            c = client.containers.create(
                image, name=f"jobkit-slurm-{tag}-{host}", hostname=host, environment=env,
                labels={**labels, "jobkit.lab.node": host}, init=True, cap_add=["SYS_ADMIN"],
                ports={"22/tcp": ("127.0.0.1", None)} if login else {},
                volumes={cluster.volume.name: {"bind": "/home", "mode": "rw"}},
                network=cluster.network.name)
            cluster.containers[host] = c
            # the compute nodes must resolve by their short names on the cluster's network
            cluster.network.disconnect(c)
            cluster.network.connect(c, aliases=[host])
        # the login node first: it initialises the shared home from the image
        for host in (layout.login, *layout.computes):
            cluster.containers[host].start()
    except BaseException:
        cluster.remove()
        raise
    return cluster


def wait_ready(cluster: Cluster, deadline: float) -> None:
    """Until ``scontrol ping`` answers, every node is idle and (with accounting) the cluster is
    listed by ``sacctmgr``; raises with what was last seen."""
    layout = cluster.layout
    check = ("scontrol ping | grep -q UP && n=$(sinfo -h -N -o '%N %t' | sort -u) && echo \"$n\" && "
             f"[ \"$(echo \"$n\" | grep -c ' idle$')\" -eq {len(layout.nodes)} ]")
    if layout.accounting:
        check += f" && sacctmgr -n -P list cluster format=cluster | grep -qx {CLUSTER_NAME}"
    last = ""
    while time.monotonic() < deadline:
        for host, c in cluster.containers.items():
            c.reload()
            if c.status == "exited":
                raise JobkitError(f"SLURM node {host} exited: "
                                  + c.logs().decode("utf-8", "replace")[-2000:])
        rc, out = cluster.exec(layout.login, check, timeout=10)
        if rc == 0:
            return
        last = out.strip()
        time.sleep(0.2)
    what = "nodes idle, controller up" + (", accounting" if layout.accounting else "")
    raise JobkitError(f"SLURM cluster not ready ({what})"
                      f": last seen: {last or 'nothing'}")


def reap_unused(client: Any, label: str, removable: Any) -> int:
    """Remove lab networks and volumes (``label=1``) for which ``removable(labels)`` is true and
    that no container uses any more; how many went."""
    n = 0
    for kind in (client.networks, client.volumes):
        for obj in kind.list(filters={"label": f"{label}=1"}):
            labels = (obj.attrs or {}).get("Labels") or {}
            if not removable(labels):
                continue
            with contextlib.suppress(Exception):
                obj.remove()
                n += 1
    return n
