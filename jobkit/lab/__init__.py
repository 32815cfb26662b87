"""The lab: real SSH servers to run jobs on, started from Python.

Targets are the Docker images of ``containers/`` (built offline by :mod:`jobkit.lab.build`) and
``local``, an in-process SSH server (:mod:`jobkit.lab.local`) that needs no Docker. A
:class:`Lab` session owns one client key, starts each target at most once (shared) or on demand
(``fresh=True``, for destructive tests), and reaps its containers at the end; containers left by
a crashed session are reaped when the next session starts. A host is *ready* when a real SSH
login with the pinned host key succeeded and the wrapper is deployed.

    with Lab() as lab:
        host = lab.start("debian-bookworm")
        host.spec   # HostSpec: 127.0.0.1, mapped port, user, key, pinned host key
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobkit.deploy import DeployReport, deploy
from jobkit.errors import ConfigError, HostUnreachable, JobkitError
from jobkit.hosts import HostSpec
from jobkit.lab.build import image_id
from jobkit.lab.keys import ClientKey, client_key, host_key
from jobkit.lab.local import LocalTarget
from jobkit.lab.targets import Target, get_target, load_manifest, offline_targets
from jobkit.transport_ssh import SSHTransport

__all__ = ["Lab", "LabHost", "Target", "load_manifest", "offline_targets", "reap_orphans"]

LABEL = "jobkit.lab"
READY_TIMEOUT = 30.0


def _testcontainers() -> Any:
    # No registry is reachable: Ryuk's image cannot be pulled, and containers must be reached on
    # 127.0.0.1 (testcontainers otherwise picks the docker0 gateway inside some environments).
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    testcontainers_config.ryuk_disabled = True
    if not testcontainers_config.tc_host_override:
        testcontainers_config.tc_host_override = "127.0.0.1"
    return DockerContainer


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


def reap_orphans(keep_session: str | None = None) -> int:
    """Remove lab containers whose owning process is gone (a crashed session); return how many."""
    import docker

    client = docker.from_env(timeout=10)
    removed = 0
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
        labels = c.labels or {}
        if labels.get(f"{LABEL}.session") == keep_session or labels.get(f"{LABEL}.keep") == "1":
            continue
        try:
            pid = int(labels.get(f"{LABEL}.pid", "0"))
        except ValueError:
            pid = 0
        if pid > 0 and labels.get(f"{LABEL}.boot") == _boot_id() and _alive(pid):
            continue  # another live session owns it
        with contextlib.suppress(Exception):
            c.remove(force=True)
            removed += 1
    return removed


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class LabHost:
    """One started target."""

    target: str
    spec: HostSpec
    deploy: DeployReport | None
    ready_seconds: float
    container: Any = None  # testcontainers DockerContainer, None for `local`
    local: LocalTarget | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def container_id(self) -> str | None:
        return str(self.container.get_wrapped_container().id) if self.container is not None else None

    def logs(self) -> str:
        """sshd's log (the container's output); empty for `local`."""
        if self.container is None:
            return ""
        out, err = self.container.get_logs()
        return bytes(out + err).decode("utf-8", "replace")

    def ssh_command(self) -> str:
        kh = self.spec.private_key.parent / f"known_hosts-{self.target}"
        kh.write_text(f"[{self.spec.address}]:{self.spec.port} {self.spec.known_host_key}\n")
        return (f"ssh -i {self.spec.private_key} -p {self.spec.port} -o IdentitiesOnly=yes "
                f"-o UserKnownHostsFile={kh} -o StrictHostKeyChecking=yes {self.spec.user}@{self.spec.address}")

    def stop(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.stop()
            self.container = None
        if self.local is not None:
            self.local.stop_in_thread()
            self.local = None


class Lab:
    """A lab session: one client key, at most one shared host per target, reaped at the end."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.session = uuid.uuid4().hex[:12]
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="jobkit-lab-"))
        self.key: ClientKey = client_key(self.workdir / "keys")
        self._shared: dict[str, LabHost] = {}
        self._all: list[LabHost] = []
        self._reaped = False

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, target: str, *, fresh: bool = False, keep: bool = False) -> LabHost:
        """A ready host for ``target``; shared within the session unless ``fresh``. A ``keep``
        host outlives the session (``jobkit lab up``) until ``jobkit lab down``."""
        if not fresh and not keep and target in self._shared:
            return self._shared[target]
        host = self._start_local() if target == "local" else self._start_docker(target, keep=keep)
        if keep:
            return host
        self._all.append(host)
        if not fresh:
            self._shared[target] = host
        return host

    def close(self) -> None:
        for host in self._all:
            host.stop()
        self._all.clear()
        self._shared.clear()

    # --- targets ----------------------------------------------------------------------------
    def _start_local(self) -> LabHost:
        start = time.monotonic()
        local = LocalTarget(self.workdir / f"local-{len(self._all)}")
        spec = local.start_in_thread()
        report = _ready(spec, time.monotonic() + READY_TIMEOUT)
        return LabHost("local", spec, report, time.monotonic() - start, local=local)

    def _start_docker(self, name: str, keep: bool = False) -> LabHost:
        target = get_target(name)
        if image_id(target.image) is None:
            hint = "jobkit lab build " + name if target.offline else f"docker build -f containers/{target.dockerfile}"
            raise ConfigError(f"image {target.image} is not built (run: {hint}); nothing is ever pulled")
        if not self._reaped:
            reap_orphans(keep_session=self.session)
            self._reaped = True
        start = time.monotonic()
        hk = host_key()
        container = _testcontainers()(
            target.image,
            env={"JOBKIT_HOST_KEY": hk.private_openssh, "JOBKIT_AUTHORIZED_KEY": self.key.public},
            labels={LABEL: "1", f"{LABEL}.session": self.session, f"{LABEL}.pid": str(os.getpid()),
                    f"{LABEL}.boot": _boot_id(), f"{LABEL}.target": name,
                    f"{LABEL}.keep": "1" if keep else "0"},
            cap_add=["SYS_ADMIN"],  # lets fault injectors mount a small tmpfs (full disk)
        )
        container.ports = {"22/tcp": ("127.0.0.1",)}  # published on 127.0.0.1 only
        container.start()
        try:
            port = int(container.get_exposed_port(22))
            spec = HostSpec(name=name, address="127.0.0.1", port=port, user="jobkit",
                            private_key=self.key.path, known_host_key=hk.public,
                            labels={"target": name, "image": target.image})
            report = _ready(spec, time.monotonic() + READY_TIMEOUT)
        except BaseException as exc:
            logs = b"".join(container.get_logs()).decode("utf-8", "replace")
            with contextlib.suppress(Exception):
                container.stop()
            raise JobkitError(f"lab target {name} did not become ready: {exc}", host=name, stderr=logs) from exc
        return LabHost(name, spec, report, time.monotonic() - start, container=container)


def _ready(spec: HostSpec, deadline: float) -> DeployReport:
    """Wait until a real SSH login succeeds, then deploy the wrapper; return the deploy report."""

    async def attempt() -> DeployReport:
        last: Exception | None = None
        while time.monotonic() < deadline:
            transport = SSHTransport(spec, connect_timeout=2.0, max_backoff=0.2)
            try:
                await transport.run("true", timeout=3.0, check=True)
                return await deploy(transport, spec.base_dir)
            except HostUnreachable as exc:  # sshd not listening yet
                last = exc
            except JobkitError as exc:
                last = exc
                if "Permission denied" in str(exc):
                    raise
            finally:
                await transport.close()
            await asyncio.sleep(0.05)
        raise HostUnreachable(f"no SSH login within the ready timeout: {last}", host=spec.name)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(attempt())
    # called from async code (a running loop in this thread): do the login in a thread of its own
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, attempt()).result()
