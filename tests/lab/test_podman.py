"""The lab on rootful Podman through its Docker-compatible socket (`podman system service`): the
images carried over with `lab save` / `lab load` (load through CONTAINER_HOST), `lab build` a
cache hit there, and conformance clauses (full disk and reboot faults included) passing on a
container Podman runs. Podman gets a storage of its own under the test's temp dir (vfs: no
mounts left behind): nothing of the Docker engine or of a system Podman is touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import cli
from jobkit.lab import docker_client, engine_is_podman

pytestmark = [pytest.mark.podman, pytest.mark.container, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed here"),
              pytest.mark.skipif(os.geteuid() != 0, reason="rootful Podman needs root")]
TARGET = "busybox"


@pytest.fixture(scope="module")
def podman_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("podman")
    conf = root / "containers.conf"
    # no systemd here: cgroupfs, and events to a file
    conf.write_text('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    f'events_logfile_path = "{root}/events.log"\n')
    sock = root / "podman.sock"
    env = dict(os.environ, CONTAINERS_CONF=str(conf))
    log = (root / "service.log").open("w")
    proc = subprocess.Popen(["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
                             "--storage-driver", "vfs", "system", "service", "--time=0", f"unix://{sock}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"unix://{sock}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                old = os.environ.get("DOCKER_HOST")
                os.environ["DOCKER_HOST"] = url
                docker_client(timeout=2).close()
                break
            except Exception:
                assert time.monotonic() < deadline, (root / "service.log").read_text()[-2000:]
                time.sleep(0.2)
            finally:
                if old is None:
                    os.environ.pop("DOCKER_HOST", None)
                else:
                    os.environ["DOCKER_HOST"] = old
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
                        "--storage-driver", "vfs", "system", "reset", "--force"], env=env,
                       capture_output=True, check=False, timeout=120)


def test_the_lab_on_rootful_podman(podman_socket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    carry = tmp_path / "carry"
    assert cli.main(["lab", "save", str(carry), TARGET]) == 0  # from the Docker engine
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env["CONTAINER_HOST"] = podman_socket  # Podman's own variable
    r = subprocess.run([sys.executable, "-m", "jobkit.cli", "lab", "load", str(carry)], env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("loaded") == 2, r.stdout
    monkeypatch.setenv("DOCKER_HOST", podman_socket)
    assert engine_is_podman()
    assert cli.main(["lab", "build", TARGET]) == 0
    assert "cached" in capsys.readouterr().out
    rc = cli.main(["conformance", "--target", TARGET, "--clause", "W-1", "--clause", "W-3", "--clause", "W-16",
                   "--clause", "R-8", "--report-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "4 pass, 0 FAIL, 0 error, 0 n/a" in out
