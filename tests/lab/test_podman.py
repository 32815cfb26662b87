"""The lab on Podman through its Docker-compatible socket (`podman system service`), rootful and
rootless: the images carried over with `lab save` / `lab load` (load through CONTAINER_HOST),
`lab build` a cache hit there, and conformance clauses (full disk and reboot faults included)
passing on a container Podman runs. Each service gets a storage of its own under a temp dir (vfs:
no mounts left behind) and is reset at the end: nothing of the Docker engine or of a system
Podman is touched.

Rootless: the service runs as the unprivileged user jobkit-rootless (made by
scripts/rootless-podman-user.sh, which the fixture runs: idempotent), with HOME, XDG_RUNTIME_DIR
and the storage in a temp dir that user owns, networking by slirp4netns. On cgroup v1 (no
systemd here) a rootless engine cannot pause a container: the faults that do (R-7) are n/a with
that reason, never a FAIL or an error."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import cli
from jobkit.lab import docker_client, engine

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.podman, pytest.mark.container, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed here"),
              pytest.mark.skipif(os.geteuid() != 0, reason="the Podman services here are started as root "
                                                           "(the rootless one through runuser)")]
TARGET = "busybox"
ROOTLESS_USER = "jobkit-rootless"


def _ping(url: str, deadline: float, log: Path) -> None:
    """Until the service at ``url`` answers (its log in the assertion when it never does)."""
    while True:
        old = os.environ.get("DOCKER_HOST")
        try:
            os.environ["DOCKER_HOST"] = url
            docker_client(timeout=2).close()
            return
        except Exception:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        finally:
            if old is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = old


def _processes_of(uid: int, mark: str) -> list[int]:
    """Live (not zombie) processes of ``uid`` whose command line or environment names ``mark``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if d.stat().st_uid != uid or (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if mark.encode() in (d / "cmdline").read_bytes() or mark.encode() in (d / "environ").read_bytes():
                found.append(int(d.name))
        except (OSError, IndexError):
            continue  # gone meanwhile
    return found


@contextlib.contextmanager
def podman_service(root: Path, user: str | None = None) -> Iterator[str]:
    """A `podman system service` on ``root``/podman.sock with its own vfs storage, config and
    events under ``root``; as ``user`` (rootless, through runuser) or as root. Yields the socket
    URL; on every path the service is stopped, its storage reset, and (rootless) every process
    left of it (the pause process holding its user namespace, conmons of exec sessions) killed."""
    conf = root / "containers.conf"
    # no systemd here: cgroupfs, and events to a file
    conf.write_text('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    f'events_logfile_path = "{root}/events.log"\n')
    env = dict(os.environ, CONTAINERS_CONF=str(conf))
    prefix: list[str] = []
    uid = 0
    if user is not None:
        pw = pwd.getpwnam(user)
        uid = pw.pw_uid
        for d in ("home", "xdg"):
            (root / d).mkdir(mode=0o700)
        for p in (root, root / "home", root / "xdg", conf):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        # HOME and XDG_RUNTIME_DIR of its own: nothing written to the user's home or /run/user
        env = {"PATH": env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CONTAINERS_CONF": str(conf),
               "HOME": str(root / "home"), "XDG_RUNTIME_DIR": str(root / "xdg"), "USER": user, "LOGNAME": user}
        prefix = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items())]
    podman = [*prefix, "podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
              "--storage-driver", "vfs"]
    sock = root / "podman.sock"
    url = f"unix://{sock}"
    log_path = root / "service.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([*podman, "system", "service", "--time=0", url], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
        try:
            _ping(url, time.monotonic() + 60, log_path)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            subprocess.run([*podman, "system", "reset", "--force"], env=env, capture_output=True, check=False,
                           timeout=120, cwd="/")
            if user is not None:
                deadline = time.monotonic() + 20
                while left := _processes_of(uid, str(root)):
                    for pid in left:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    assert time.monotonic() < deadline, f"processes of the rootless service left: {left}"
                    time.sleep(0.1)


@pytest.fixture(scope="module")
def rootful_podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with podman_service(tmp_path_factory.mktemp("podman")) as url:
        yield url


@pytest.fixture(scope="module")
def rootless_podman() -> Iterator[str]:
    for tool in ("newuidmap", "newgidmap", "slirp4netns", "runuser"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs uidmap and slirp4netns)")
    subprocess.run(["bash", str(ROOT / "scripts" / "rootless-podman-user.sh")], check=True, timeout=60)
    # a directory the user can reach (pytest's temp dirs are root's, mode 0700)
    root = Path(tempfile.mkdtemp(prefix="jobkit-rootless-podman-"))
    try:
        with podman_service(root, ROOTLESS_USER) as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)


def carry_images_to(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> None:
    """`lab save` the target from the Docker engine, `lab load` it into the Podman at ``url``
    (through CONTAINER_HOST, in a process of its own), then point this process at that Podman
    and check that `lab build` is a cache hit there."""
    carry = tmp_path / "carry"
    assert cli.main(["lab", "save", str(carry), TARGET]) == 0  # from the Docker engine
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env["CONTAINER_HOST"] = url  # Podman's own variable
    r = subprocess.run([sys.executable, "-m", "jobkit.cli", "lab", "load", str(carry)], env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("loaded") == 2, r.stdout
    monkeypatch.setenv("DOCKER_HOST", url)
    assert engine().podman
    assert cli.main(["lab", "build", TARGET]) == 0
    assert "cached" in capsys.readouterr().out


def test_the_lab_on_rootful_podman(rootful_podman: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    carry_images_to(rootful_podman, tmp_path, monkeypatch, capsys)
    assert not engine().rootless
    rc = cli.main(["conformance", "--target", TARGET, "--clause", "W-1", "--clause", "W-3", "--clause", "W-16",
                   "--clause", "R-8", "--report-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "4 pass, 0 FAIL, 0 error, 0 n/a" in out


def test_the_lab_on_rootless_podman(rootless_podman: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    carry_images_to(rootless_podman, tmp_path, monkeypatch, capsys)
    e = engine()
    assert e.rootless, e
    assert cli.main(["lab", "ls"]) == 0
    assert "(rootless" in capsys.readouterr().out
    report = tmp_path / "r"
    rc = cli.main(["conformance", "--target", TARGET, "--clause", "W-1", "--clause", "W-3", "--clause", "W-16",
                   "--clause", "R-8", "--clause", "R-7", "--report-dir", str(report)])
    captured = capsys.readouterr()
    assert rc == 0, captured.out
    assert "on Podman" in captured.err, captured.err
    assert "(rootless" in captured.err, captured.err
    data = json.loads((report / "conformance.json").read_text())
    assert "rootless" in data["engine"], data["engine"]
    outcomes = {r["clause"]: (r["outcome"], r["message"]) for r in data["results"]}
    # the faults that mount inside the container (full disk: tmpfs and overlay; reboot: a bind
    # mount over the boot id) are made in the container's own user namespace: they pass
    for clause in ("W-1", "W-3", "W-16", "R-8"):
        assert outcomes[clause][0] == "pass", outcomes
    if e.can_pause:
        assert outcomes["R-7"][0] == "pass", outcomes
    else:  # cgroup v1: no freezer of its own
        assert outcomes["R-7"][0] == "n/a", outcomes
        assert "cannot" in outcomes["R-7"][1], outcomes
        assert "rootless" in outcomes["R-7"][1], outcomes
        assert "4 pass, 0 FAIL, 0 error, 1 n/a" in captured.out, captured.out
