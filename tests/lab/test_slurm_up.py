"""`jobkit lab up slurm` as a user runs it: the line it prints logs in to the cluster's login node,
where `sinfo` shows the two compute nodes idle; `jobkit lab down ID` removes the whole cluster
(its three containers, its network and its shared home volume)."""

from __future__ import annotations

import re
import shlex
import subprocess
import time

import docker
import pytest

from jobkit import cli
from jobkit.lab import LABEL

pytestmark = [pytest.mark.container, pytest.mark.slurm, pytest.mark.slow]


def _labelled(client: docker.DockerClient, cluster: str) -> tuple[list[str], list[str], list[str]]:
    f = {"label": f"{LABEL}.cluster={cluster}"}
    return ([c.id for c in client.containers.list(all=True, filters=f)],
            [n.id for n in client.networks.list(filters=f)],
            [v.name for v in client.volumes.list(filters=f)])


def test_lab_up_slurm_prints_a_login_where_sinfo_shows_two_idle_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    client = docker.from_env()
    assert cli.main(["lab", "up", "slurm"]) == 0
    out, err = capsys.readouterr()
    m = re.search(r"jobkit lab down ([0-9a-f]{12})\b", err)
    assert m, err
    short = m.group(1)
    login = client.containers.get(short)
    cluster = (login.labels or {}).get(f"{LABEL}.cluster", "")
    try:
        assert cluster, f"the login node carries no {LABEL}.cluster label: {login.labels}"
        ssh = shlex.split(out.strip())
        assert ssh[0] == "ssh", out
        nodes: dict[str, str] = {}
        deadline = time.monotonic() + 60  # ready means idle already; a node may still be settling
        while time.monotonic() < deadline:
            r = subprocess.run([*ssh, "sinfo -N -h -o '%N %t'"], capture_output=True, text=True, timeout=30,
                               check=False)
            assert r.returncode == 0, r.stderr
            nodes = dict(line.split() for line in r.stdout.splitlines() if line.strip())
            if sorted(nodes) == ["c1", "c2"] and set(nodes.values()) == {"idle"}:
                break
            time.sleep(0.5)
        assert sorted(nodes) == ["c1", "c2"], nodes
        assert set(nodes.values()) == {"idle"}, nodes
        containers, networks, volumes = _labelled(client, cluster)
        assert len(containers) == 3, containers  # the login/controller node and c1, c2
        assert networks, "the cluster has a network of its own"
        assert volumes, "the cluster has a shared home volume"
    finally:
        assert cli.main(["lab", "down", short]) == 0
        capsys.readouterr()
    assert _labelled(client, cluster) == ([], [], [])
