"""Every offline lab target: built offline, boots, key login, wrapper end to end, manifest true."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import docker
import pytest

from jobkit.lab import Lab, LabHost, load_manifest, offline_targets, reap_orphans
from jobkit.lab.build import HASH_LABEL, build, image_label
from jobkit.transport_ssh import SSHTransport
from tests.lab.scenarios import wrapper_end_to_end

pytestmark = pytest.mark.container
TARGETS = offline_targets(clusters=True)


@pytest.fixture(params=TARGETS)
def host(request: pytest.FixtureRequest, jobkit_lab: Lab) -> LabHost:
    return jobkit_lab.start(request.param)


def test_image_is_the_offline_build_and_rebuilding_it_is_a_noop(host: LabHost) -> None:
    target = load_manifest()[host.target]
    assert image_label(target.image, HASH_LABEL)
    assert build(host.target).built is False


def test_ssh_is_published_on_loopback_only_and_ready_quickly(host: LabHost) -> None:
    info = docker.from_env().api.inspect_container(host.container_id)
    bindings = info["HostConfig"]["PortBindings"]["22/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    assert host.spec.address == "127.0.0.1"
    assert host.deploy is not None


async def test_key_login_and_the_wrapper_end_to_end(host: LabHost) -> None:
    t = SSHTransport(host.spec)
    try:
        await wrapper_end_to_end(t, host.target.replace("-", "_"))
    finally:
        await t.close()


PROBE = r"""
sh=$(readlink -f /bin/sh); echo "sh=${sh##*/}"
for t in bash flock perl; do if command -v $t >/dev/null 2>&1; then echo "$t=true"; else echo "$t=false"; fi; done
g=false; if env --default-signal=INT true 2>/dev/null; then g=true; fi; echo "gnu_env_default_signal=$g"
echo "sqlite3=$(sqlite3 --version | cut -d' ' -f1)"
echo "tmux=$(tmux -V | cut -d' ' -f2)"
if command -v sinfo >/dev/null 2>&1; then
  echo "slurm=$(sinfo -V | cut -d' ' -f2 | cut -d. -f1,2)"
  if sacctmgr -n list cluster >/dev/null 2>&1; then echo accounting=true; else echo accounting=false; fi
  echo "nodes=$(sinfo -h -N -o %N | sort -u | wc -l)"
fi
"""


async def test_manifest_matches_the_running_container(host: LabHost) -> None:
    t = SSHTransport(host.spec)
    try:
        out = (await t.run(PROBE, check=True)).stdout
    finally:
        await t.close()
    seen = dict(line.split("=", 1) for line in out.split())
    offers = load_manifest()[host.target].offers
    expected = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in offers.items()}
    assert {k: seen.get(k) for k in expected} == expected


async def test_a_hundred_concurrent_commands_share_one_connection(host: LabHost) -> None:
    t = SSHTransport(host.spec)  # sshd's MaxSessions is 10: the transport keeps under it
    try:
        results = await asyncio.gather(*(t.run(f"echo {i}") for i in range(100)))
    finally:
        await t.close()
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(100)]


def test_containers_of_a_crashed_session_are_reaped(jobkit_lab: Lab) -> None:
    client = docker.from_env()
    image = load_manifest()[TARGETS[0]].image
    dead_pid = 4_000_000  # above any pid_max: never alive
    orphan = client.containers.create(image, labels={
        "jobkit.lab": "1", "jobkit.lab.session": "crashed", "jobkit.lab.pid": str(dead_pid),
        "jobkit.lab.boot": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
    })
    ours = jobkit_lab.start(TARGETS[0])
    assert reap_orphans(keep_session=jobkit_lab.session) >= 1
    ids = {c.id for c in client.containers.list(all=True, filters={"label": "jobkit.lab=1"})}
    assert orphan.id not in ids
    assert ours.container_id in ids
    assert os.getpid() > 0
