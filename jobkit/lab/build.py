"""Build the lab's images offline: debootstrap → ``docker import`` → ``docker build``.

Nothing is pulled: base images come from ``debootstrap`` of Debian's mirror (tarballs cached in
the cache directory) imported with ``docker import``; every ``docker build`` runs with
``--pull=false`` FROM those local tags (or FROM scratch). Each image carries a label with the
content hash of its inputs (Dockerfile, package list, shared files, base image id): rebuilding
an unchanged target is a no-op. Progress goes to stderr.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobkit.errors import ConfigError, JobkitError
from jobkit.lab.targets import Target, containers_dir, get_target

MIRROR = os.environ.get("JOBKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
HASH_LABEL = "jobkit.lab.hash"
Progress = Callable[[str], None]


def cache_dir() -> Path:
    env = os.environ.get("JOBKIT_CACHE_DIR")
    if env:
        return Path(env)
    return Path("/var/cache/jobkit") if os.geteuid() == 0 else Path.home() / ".cache" / "jobkit"


def _say(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


if os.environ.get("CONTAINER_HOST") and not os.environ.get("DOCKER_HOST"):  # Podman's name for it
    os.environ["DOCKER_HOST"] = os.environ["CONTAINER_HOST"]


def _docker(*args: str, capture: bool = True, stdin: int | None = None) -> str:
    proc = subprocess.run(["docker", *args], capture_output=capture, text=True, check=False, stdin=stdin)
    if proc.returncode != 0:
        raise JobkitError(f"docker {args[0]} failed", command="docker " + " ".join(args),
                          exit_status=proc.returncode, stdout=proc.stdout or "", stderr=proc.stderr or "")
    return (proc.stdout or "").strip()


def image_label(image: str, label: str) -> str | None:
    proc = subprocess.run(["docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{label}"}}}}', image],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    value = proc.stdout.strip()
    return None if value in ("", "<no value>") else value


def image_id(image: str) -> str | None:
    proc = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def rootfs_tarball(suite: str, progress: Progress = _say) -> Path:
    """A debootstrap (minbase) of ``suite`` as a tarball in the cache, made once."""
    out = cache_dir() / "rootfs" / f"{suite}.tar"
    if out.exists():
        return out
    if shutil.which("debootstrap") is None:
        raise ConfigError("debootstrap is not installed (scripts/setup.sh installs it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f"tmp.{suite}.") as tmp:
        progress(f"debootstrap {suite} from {MIRROR} (about a minute)")
        start = time.monotonic()
        log = out.with_suffix(".log")
        with log.open("w") as fh:
            rc = subprocess.run(["debootstrap", "--variant=minbase", suite, tmp, MIRROR],
                                stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
        if rc != 0:
            raise JobkitError(f"debootstrap {suite} failed (log: {log})", exit_status=rc)
        part = out.with_suffix(".tar.part")
        subprocess.run(["tar", "-C", tmp, "-cf", str(part), "."], check=True)
        part.rename(out)
        progress(f"debootstrap {suite} done in {time.monotonic() - start:.0f}s")
    return out


def base_image(suite: str, progress: Progress = _say) -> str:
    """``jobkit-base:debian-<suite>``, imported from the debootstrap tarball if missing."""
    tag = f"jobkit-base:debian-{suite}"
    if image_id(tag):
        return tag
    tar = rootfs_tarball(suite, progress)
    progress(f"docker import {tar.name} as {tag}")
    with tar.open("rb") as fh:
        proc = subprocess.run(["docker", "import", "--change", "CMD [\"/bin/bash\"]", "-", tag],
                              stdin=fh, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise JobkitError("docker import failed", stderr=proc.stderr, exit_status=proc.returncode)
    return tag


def input_hash(target: Target, base_id: str | None) -> str:
    root = containers_dir()
    h = hashlib.sha256()
    files = [root / target.dockerfile, *sorted((root / "common").iterdir()), *sorted((root / "packages").iterdir())]
    # every other file beside the Dockerfile (busybox's assemble.sh, the SLURM entrypoint)
    here = root / Path(target.dockerfile).parent
    files += sorted(f for f in here.iterdir() if f.is_file() and f.name != Path(target.dockerfile).name)
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(f"base={base_id}".encode())
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class BuildResult:
    target: str
    image: str
    built: bool  # False: cached, nothing done
    seconds: float


def build(name: str, progress: Progress = _say, force: bool = False) -> BuildResult:
    target = get_target(name)
    if not target.offline:
        raise ConfigError(f"{name} needs an image registry for its base ({target.dockerfile}); "
                          "build it with docker build where one is reachable")
    start = time.monotonic()
    base = base_image(target.base, progress) if target.base else None
    digest = input_hash(target, image_id(base) if base else None)
    if not force and image_label(target.image, HASH_LABEL) == digest:
        progress(f"{name}: up to date ({target.image}, inputs {digest})")
        return BuildResult(name, target.image, False, time.monotonic() - start)
    progress(f"{name}: building {target.image} from {target.dockerfile}")
    cmd = ["docker", "build", "--pull=false", "-f", str(containers_dir() / target.dockerfile),
           "-t", target.image, "--label", f"{HASH_LABEL}={digest}", "--label", f"jobkit.lab.target={name}"]
    if force:
        cmd.append("--no-cache")  # a forced build is a cold build: no layer reuse
    if base:
        cmd += ["--build-arg", f"BASE={base}"]
    cmd.append(str(containers_dir()))
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-40:], line]
        if line.startswith(("Step ", "Successfully")) or "error" in line.lower():
            progress(f"{name}: {line}")
    if proc.wait() != 0:
        raise JobkitError(f"docker build of {name} failed", exit_status=proc.returncode, stdout="\n".join(tail))
    seconds = time.monotonic() - start
    progress(f"{name}: built in {seconds:.0f}s")
    return BuildResult(name, target.image, True, seconds)
