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
import socket
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobkit.deploy import DeployReport, deploy
from jobkit.errors import ConfigError, HostUnreachable, JobkitError
from jobkit.hosts import HostSpec
from jobkit.lab.build import image_id
from jobkit.lab.keys import ClientKey, client_key, host_key
from jobkit.lab.local import LocalTarget
from jobkit.lab.session import Owner, create_kept_dir, create_workdir, reap_kept_dirs, remove_workdir, stop_processes
from jobkit.lab.slurm import ContainerHandle, is_slurm_target, reap_unused, start_cluster, wait_ready
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


def use_container_host() -> None:
    """Podman's ``CONTAINER_HOST`` names the engine when ``DOCKER_HOST`` does not: both the Docker
    SDK and the docker CLI (builds, ``lab save``/``load``) then talk to that socket."""
    if os.environ.get("CONTAINER_HOST") and not os.environ.get("DOCKER_HOST"):
        os.environ["DOCKER_HOST"] = os.environ["CONTAINER_HOST"]


@dataclass(frozen=True)
class Engine:
    """The container engine that answers on ``DOCKER_HOST``: Docker or Podman, rootful or
    rootless (as the engine itself says: Podman's ``Rootless`` in its info, Docker's
    ``name=rootless`` security option), and its cgroup version."""

    name: str  # "Docker" or "Podman"
    version: str
    rootless: bool
    cgroup_version: str  # "1", "2" or "" when the engine does not say
    host: str  # the socket, as DOCKER_HOST names it ("" for the default)

    @property
    def podman(self) -> bool:
        return self.name == "Podman"

    @property
    def can_pause(self) -> bool:
        """Whether the engine can pause (freeze) a container. A rootless engine on cgroup v1
        cannot: the freezer hierarchy is root's (Podman says "can not pause containers on rootless
        containers with cgroup V1")."""
        return not (self.rootless and self.cgroup_version == "1")

    def describe(self) -> str:
        mode = "rootless" if self.rootless else "rootful"
        cgroup = f", cgroup v{self.cgroup_version}" if self.cgroup_version else ""
        return f"{self.name} {self.version} ({mode}{cgroup}) at {self.host or 'unix:///var/run/docker.sock'}"


_engines: dict[str, Engine] = {}


def engine() -> Engine:
    """What engine answers on ``DOCKER_HOST`` (or ``CONTAINER_HOST``), asked once per socket."""
    use_container_host()
    key = os.environ.get("DOCKER_HOST", "")
    if key not in _engines:
        client = docker_client()
        try:
            version = client.version()
            info = client.info()
        finally:
            client.close()
        _engines[key] = engine_of(version, info, key)
    return _engines[key]


def engine_of(version: dict[str, Any], info: dict[str, Any], host: str) -> Engine:
    """The :class:`Engine` an engine's ``/version`` and ``/info`` answers describe."""
    components = version.get("Components") or []
    podman = [c for c in components if "podman" in str(c.get("Name", "")).lower()]
    security = [str(o) for o in info.get("SecurityOptions") or []]
    return Engine(name="Podman" if podman else "Docker",
                  version=str(podman[0].get("Version") if podman else version.get("Version", "?")),
                  rootless=info.get("Rootless") is True or any("name=rootless" in o for o in security),
                  cgroup_version=str(info.get("CgroupVersion") or ""), host=host)


def engine_is_podman() -> bool:
    """Whether the engine that answers is Podman's Docker-compatible service (asked once per socket)."""
    return engine().podman


def engine_run_options() -> dict[str, Any]:
    """Options a container needs on this engine. Rootful Podman raises the open-files and process
    limits of a container above what its service may grant (runc then fails: "error setting
    rlimits ... operation not permitted"; the service caps its own process limit at pid_max):
    there, modest limits within the caller's own are asked for instead (8192 processes, 65536
    files: far above what a lab target runs). Rootless Podman sets a container's limits to its
    own service's (whatever is asked): nothing is asked there, the caller's limits say nothing of
    the service's, which runs as another user."""
    e = engine()
    if not e.podman or e.rootless:
        return {}
    import resource

    from docker.types import Ulimit

    limits = []
    for name, which, cap in (("nofile", resource.RLIMIT_NOFILE, 65536), ("nproc", resource.RLIMIT_NPROC, 8192)):
        hard = resource.getrlimit(which)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        limits.append(Ulimit(name=name, soft=value, hard=value))
    return {"ulimits": limits}


def docker_client(timeout: float = 10) -> Any:
    """A client of the Docker engine (``DOCKER_HOST`` etc. as the docker CLI reads them), or an
    error when none answers. The API version is asked first with a client that is closed
    whatever happens: ``docker.from_env()`` asks it in its constructor and leaks its socket
    when the engine does not answer."""
    import docker
    from docker.utils import kwargs_from_env

    use_container_host()
    kwargs = kwargs_from_env()
    base = str(kwargs.get("base_url") or "unix:///var/run/docker.sock")
    if base.startswith(("unix://", "/")):  # docker-py leaks the socket of a failed unix connect
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(base.removeprefix("unix://"))
            except OSError as exc:
                raise ConnectionError(f"cannot connect to {base}: {exc.strerror or exc}") from exc
    probe = docker.APIClient(version="1.24", timeout=timeout, **kwargs)  # no request made yet
    try:
        version = str(probe.version(api_version=False)["ApiVersion"])
    finally:
        probe.close()
    return docker.DockerClient(version=version, timeout=timeout, **kwargs)


def docker_available() -> bool:
    try:
        docker_client(timeout=5).close()
    except Exception:
        return False
    return True


def reap_orphans(keep_session: str | None = None) -> int:
    """Remove lab containers whose owning process is gone (a crashed session); return how many.

    Never a container of a live session (another process's, or ``keep_session``), nor one kept
    by ``jobkit lab up`` (``jobkit lab down`` removes those); key directories of kept containers
    that no longer exist go too."""
    client = docker_client()
    removed = 0
    keydirs: set[str] = set()
    try:
        for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}):
            labels = c.labels or {}
            if labels.get(f"{LABEL}.keydir"):
                keydirs.add(labels[f"{LABEL}.keydir"])
            if labels.get(f"{LABEL}.session") == keep_session or labels.get(f"{LABEL}.keep") == "1":
                continue
            if owner_of(labels).alive():
                continue  # another live session owns it
            with contextlib.suppress(Exception):
                c.remove(force=True)
                removed += 1
        # a SLURM cluster's network and home volume: once no container uses them
        reap_unused(client, LABEL, lambda labels: labels.get(f"{LABEL}.session") != keep_session
                    and labels.get(f"{LABEL}.keep") != "1" and not owner_of(labels).alive())
    finally:
        client.close()
    reap_kept_dirs(keydirs)
    return removed


def owner_of(labels: dict[str, str]) -> Owner:
    """The process that started a lab container, from its labels."""
    return Owner.from_labels(labels, LABEL)


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
    """A lab session: one client key, at most one shared host per target, reaped at the end.

    ``workdir``: where the session keeps its key and the homes of ``local`` targets. By default
    a private directory of the session under the cache dir, removed by :meth:`close` (also at
    interpreter exit if close was never called); a given ``workdir`` is the caller's and stays,
    but what the session started in it (tmux servers, jobs) is stopped all the same."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.session = uuid.uuid4().hex[:12]
        self._shared: dict[str, LabHost] = {}
        self._all: list[LabHost] = []
        self._on_close: list[Callable[[], object]] = []
        self._reaped = False
        own = workdir is None
        self.workdir = create_workdir("lab") if workdir is None else workdir
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._cleanup = weakref.finalize(self, _end_session, self.workdir, own)
        try:
            self.key: ClientKey = client_key(self.workdir / "keys")
        except BaseException:
            self._cleanup()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, target: str, *, fresh: bool = False, keep: bool = False) -> LabHost:
        """A ready host for ``target``; shared within the session unless ``fresh``. A ``keep``
        host outlives the session (``jobkit lab up``) until ``jobkit lab down``; it has a key of
        its own, in a directory that goes with the container."""
        if not fresh and not keep and target in self._shared:
            return self._shared[target]
        if target == "local":
            if keep:
                raise ConfigError("the local target runs inside its session's process: it cannot be kept")
            host = self._start_local()
        elif is_slurm_target(target):
            host = self._start_slurm(target, keep=keep)
        else:
            host = self._start_docker(target, keep=keep)
        if keep:
            return host
        self._all.append(host)
        if not fresh:
            self._shared[target] = host
        return host

    def on_close(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` first thing in :meth:`close` (whatever ends the session): hosts kept by
        their caller (``keep=True``) are not the session's, and this is where their caller lets go."""
        self._on_close.append(fn)

    def close(self) -> None:
        """Stop every host of the session, then remove the work directory (idempotent)."""
        while self._on_close:
            with contextlib.suppress(Exception):
                self._on_close.pop()()
        hosts, self._all = self._all, []
        self._shared.clear()
        try:
            for host in hosts:
                with contextlib.suppress(Exception):
                    host.stop()
        finally:
            self._cleanup()

    # --- targets ----------------------------------------------------------------------------
    def _start_local(self) -> LabHost:
        start = time.monotonic()
        n = len(self._all)
        while (self.workdir / f"local-{n}").exists():
            n += 1
        local = LocalTarget(self.workdir / f"local-{n}")
        _check_socket_room(local.home)
        try:
            spec = local.start_in_thread()
            report = _ready(spec, time.monotonic() + READY_TIMEOUT)
        except BaseException:
            local.stop_in_thread()
            raise
        return LabHost("local", spec, report, time.monotonic() - start, local=local)

    def _check_image(self, name: str) -> Target:
        target = get_target(name)
        if not docker_available():
            raise ConfigError(f"lab target {name} needs a Docker engine, and none answers"
                              + (f" at {os.environ['DOCKER_HOST']}" if os.environ.get("DOCKER_HOST") else ""))
        if image_id(target.image) is None:
            hint = "jobkit lab build " + name if target.offline else f"docker build -f containers/{target.dockerfile}"
            raise ConfigError(f"image {target.image} is not built (run: {hint}); nothing is ever pulled")
        if not self._reaped:
            reap_orphans(keep_session=self.session)
            self._reaped = True
        return target

    def _labels(self, name: str, keep: bool) -> tuple[dict[str, str], Path | None]:
        labels = {LABEL: "1", f"{LABEL}.session": self.session, **Owner.current().labels(LABEL),
                  f"{LABEL}.target": name, f"{LABEL}.keep": "1" if keep else "0"}
        keydir: Path | None = None
        if keep:  # its key outlives this session: it lives in a directory that goes with the container
            keydir = create_kept_dir(f"{name}-{self.session}")
            labels[f"{LABEL}.keydir"] = keydir.name
        return labels, keydir

    def _start_slurm(self, name: str, keep: bool = False) -> LabHost:
        """A SLURM cluster (:mod:`jobkit.lab.slurm`); the host is its login node."""
        target = self._check_image(name)
        start = time.monotonic()
        hk = host_key()
        labels, keydir = self._labels(name, keep)
        cluster = None
        try:
            key = client_key(keydir) if keydir is not None else self.key
            cluster = start_cluster(docker_client(timeout=60), name, target.image, labels,
                                    host_key_private=hk.private_openssh, authorized_key=key.public)
            handle = ContainerHandle(cluster)
            port = int(handle.get_exposed_port(22))
            spec = HostSpec(name=name, address="127.0.0.1", port=port, user="jobkit", private_key=key.path,
                            known_host_key=hk.public, labels={"target": name, "image": target.image},
                            scheduler="slurm")
            deadline = time.monotonic() + READY_TIMEOUT * 3
            report = _ready(spec, deadline)
            wait_ready(cluster, deadline)
        except BaseException as exc:
            logs = ""
            if cluster is not None:
                with contextlib.suppress(Exception):
                    logs = "\n".join(f"--- {n}: " + c.logs().decode("utf-8", "replace")[-1500:]
                                      for n, c in cluster.containers.items())
                cluster.remove()
            if keydir is not None:
                remove_workdir(keydir)
            if not isinstance(exc, Exception):
                raise
            raise JobkitError(f"lab target {name} did not become ready: {exc}", host=name, stderr=logs) from exc
        return LabHost(name, spec, report, time.monotonic() - start, container=handle, extra={"cluster": cluster})

    def _start_docker(self, name: str, keep: bool = False) -> LabHost:
        target = self._check_image(name)
        start = time.monotonic()
        hk = host_key()
        key = self.key
        labels, keydir = self._labels(name, keep)
        container = None
        try:
            if keydir is not None:
                key = client_key(keydir)
            container = _testcontainers()(
                target.image,
                env={"JOBKIT_HOST_KEY": hk.private_openssh, "JOBKIT_AUTHORIZED_KEY": key.public},
                labels=labels,
                cap_add=["SYS_ADMIN"],  # lets fault injectors mount a small tmpfs (full disk)
                **engine_run_options(),
            )
            container.ports = {"22/tcp": ("127.0.0.1",)}  # published on 127.0.0.1 only
            container.start()
            port = int(container.get_exposed_port(22))
            spec = HostSpec(name=name, address="127.0.0.1", port=port, user="jobkit",
                            private_key=key.path, known_host_key=hk.public,
                            labels={"target": name, "image": target.image})
            report = _ready(spec, time.monotonic() + READY_TIMEOUT)
        except BaseException as exc:
            logs = ""
            if container is not None:
                with contextlib.suppress(Exception):
                    logs = b"".join(container.get_logs()).decode("utf-8", "replace")
                with contextlib.suppress(Exception):
                    container.stop()
            if keydir is not None:
                remove_workdir(keydir)
            if not isinstance(exc, Exception):
                raise  # interrupted: as it is
            raise JobkitError(f"lab target {name} did not become ready: {exc}", host=name, stderr=logs) from exc
        return LabHost(name, spec, report, time.monotonic() - start, container=container)


def _end_session(workdir: Path, own: bool) -> None:
    """Stop what the session started in its work directory; remove the directory if it is the
    session's own."""
    if own:
        remove_workdir(workdir)
    else:
        stop_processes(workdir)


#: the longest tmux socket path under a local target's HOME with the default base directories
_SOCKET_TAIL = "/.jobkit-conformance/tmux.sock"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL


def _check_socket_room(home: Path) -> None:
    path = f"{home}{_SOCKET_TAIL}"
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ConfigError(f"the lab's work directory {home.parent} is too deep for tmux: a socket path such as "
                          f"{path} exceeds {_SUN_PATH_MAX} bytes; set JOBKIT_CACHE_DIR to a shorter directory")


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
