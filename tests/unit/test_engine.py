"""What the lab makes of a container engine's /version and /info answers (as Docker 20.10 and
Podman 4.3 give them), and which faults a rootless engine cannot make."""

from __future__ import annotations

from typing import Any, cast

import pytest

import jobkit.lab
from jobkit.faults import Fault, HostHandle, engine_cannot
from jobkit.lab import Engine, engine_of

pytestmark = pytest.mark.unit
DOCKER_VERSION = {"Version": "20.10.24+dfsg1", "Components": [{"Name": "Engine", "Version": "20.10.24+dfsg1"}]}
PODMAN_VERSION = {"Version": "4.3.1", "Components": [{"Name": "Podman Engine", "Version": "4.3.1"},
                                                     {"Name": "Conmon", "Version": "conmon version 2.1.6"}]}


def test_docker_rootful_and_rootless() -> None:
    e = engine_of(DOCKER_VERSION, {"SecurityOptions": ["name=seccomp,profile=default"], "CgroupVersion": "1"}, "")
    assert (e.name, e.version, e.rootless, e.can_pause) == ("Docker", "20.10.24+dfsg1", False, True)
    assert e.describe() == "Docker 20.10.24+dfsg1 (rootful, cgroup v1) at unix:///var/run/docker.sock"
    e = engine_of(DOCKER_VERSION, {"SecurityOptions": ["name=seccomp,profile=default", "name=rootless"],
                                   "CgroupVersion": "2"}, "unix:///run/user/1000/docker.sock")
    assert (e.rootless, e.can_pause) == (True, True)
    assert e.describe().endswith("(rootless, cgroup v2) at unix:///run/user/1000/docker.sock")


def test_podman_rootless_on_cgroup_v1_cannot_pause() -> None:
    # Podman 4.3's compat /info: no "name=rootless" security option, but its own Rootless field
    info = {"SecurityOptions": ["name=seccomp,profile=default"], "Rootless": True, "CgroupVersion": "1"}
    e = engine_of(PODMAN_VERSION, info, "unix:///tmp/p/podman.sock")
    assert (e.name, e.version, e.podman, e.rootless, e.can_pause) == ("Podman", "4.3.1", True, True, False)
    assert engine_of(PODMAN_VERSION, {**info, "Rootless": False}, "").can_pause
    assert engine_of(PODMAN_VERSION, {**info, "CgroupVersion": "2"}, "").can_pause


class _Lab:
    local = None  # a container target


def test_pausing_faults_are_not_made_where_the_engine_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    host = HostHandle(transport=cast(Any, None), lab=_Lab())  # no command is run
    rootless = Engine("Podman", "4.3.1", rootless=True, cgroup_version="1", host="unix:///p.sock")
    monkeypatch.setattr(jobkit.lab, "engine", lambda: rootless)
    for fault in (Fault.SLOW_HOST, Fault.UNREACHABLE_HOST):
        why = engine_cannot(fault, host)
        assert why is not None
        assert why.startswith(f"{fault.name} pauses the container, and Podman 4.3.1 (rootless, cgroup v1)")
    for fault in (Fault.FULL_DISK, Fault.HOST_REBOOT, Fault.LOCKED_DB):
        assert engine_cannot(fault, host) is None
    monkeypatch.setattr(jobkit.lab, "engine", lambda: Engine("Podman", "4.3.1", False, "1", ""))
    assert engine_cannot(Fault.SLOW_HOST, host) is None
