"""``jobkit lab save DIR`` / ``jobkit lab load DIR``: carry the offline-built lab images to a
machine with no network (an air-gapped CI runner).

``save`` writes one ``docker image save`` tarball per image, named with the hash that identifies
it (a target image: ``<target>-<input hash>.tar``, the hash ``jobkit lab build`` labels it with;
a debootstrap base image: ``base-debian-<suite>-<image id>.tar``) and ``jobkit-lab.json``, the
manifest: per tarball its image, that hash and the tarball's sha256. ``load`` checks everything
before it loads anything: each tarball's sha256, and that each target's input hash is the one
this checkout's ``containers/`` gives (with the base image the manifest names), so that
``jobkit lab build`` afterwards finds every image up to date and builds nothing. A tarball that
does not match is refused with one line, exit 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobkit.errors import ConfigError, JobkitError
from jobkit.lab.build import HASH_LABEL, image_id, image_label, input_hash
from jobkit.lab.targets import Target, load_manifest, offline_targets

MANIFEST = "jobkit-lab.json"
VERSION = 1
Say = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _docker(*args: str) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise JobkitError(f"docker {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                          f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc.stdout.strip()


def _save_one(image: str, out: Path) -> str:
    part = out.with_name(out.name + ".part")
    try:
        _docker("image", "save", "-o", str(part), image)
        digest = sha256_file(part)
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    return digest


@dataclass(frozen=True)
class Entry:
    kind: str  # target | base
    name: str  # target name, or the base image's suite
    image: str
    hash: str  # input hash (target) or image id (base)
    file: str
    sha256: str
    base_id: str | None = None  # a target's base image id, part of its input hash

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def save(directory: Path, names: list[str] | None = None, *, targets: dict[str, Target] | None = None,
         say: Say = _say) -> list[Entry]:
    """Save the built images of NAMES (default: every offline target) and their bases into DIRECTORY."""
    manifest = targets or load_manifest()
    every = offline_targets(clusters=True) if targets is None else manifest
    names = names or [n for n in every if manifest[n].offline]
    for n in names:
        if n not in manifest:
            raise ConfigError(f"unknown lab target {n!r}; known: {', '.join(manifest)}")
        if not manifest[n].offline:
            raise ConfigError(f"{n} is not built offline by jobkit lab build: nothing to carry")
    chosen = [manifest[n] for n in names]
    missing = [t.name for t in chosen if not image_label(t.image, HASH_LABEL)]
    if missing:
        raise ConfigError(f"not built here: {', '.join(missing)} (run: jobkit lab build {' '.join(missing)})")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ".jobkit-write-test").write_bytes(b"")
        (directory / ".jobkit-write-test").unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to {directory}: {exc.strerror or exc}") from None
    entries: list[Entry] = []
    bases: dict[str, str] = {}
    for t in chosen:
        if t.base_image and t.base_image not in bases:
            bid = image_id(t.base_image)
            if not bid:
                raise ConfigError(f"base image {t.base_image} of {t.name} is missing (run: jobkit lab build {t.name})")
            bases[t.base_image] = bid
            short = bid.removeprefix("sha256:")[:20]
            f = f"base-debian-{t.base}-{short}.tar"
            say(f"saving {t.base_image} to {f}")
            entries.append(Entry("base", str(t.base), t.base_image, bid, f, _save_one(t.base_image, directory / f)))
        digest = image_label(t.image, HASH_LABEL) or ""
        base_id = bases.get(t.base_image) if t.base_image else None
        if digest != input_hash(t, base_id):
            raise ConfigError(f"{t.image} was built from other inputs than this checkout's containers/ "
                              f"(run: jobkit lab build {t.name})")
        f = f"{t.name}-{digest}.tar"
        say(f"saving {t.image} to {f}")
        entries.append(Entry("target", t.name, t.image, digest, f, _save_one(t.image, directory / f), base_id))
    (directory / MANIFEST).write_text(json.dumps({"version": VERSION, "images": [e.as_dict() for e in entries]},
                                                 indent=2) + "\n")
    return entries


def read_manifest(directory: Path) -> list[Entry]:
    path = directory / MANIFEST
    try:
        raw = json.loads(path.read_text())
        if raw.get("version") != VERSION:
            raise ConfigError(f"{path}: manifest version {raw.get('version')!r}, this jobkit reads {VERSION}")
        entries = [Entry(e["kind"], e["name"], e["image"], e["hash"], e["file"], e["sha256"], e.get("base_id"))
                   for e in raw["images"]]
    except FileNotFoundError:
        raise ConfigError(f"{directory} holds no {MANIFEST} (made by: jobkit lab save DIR)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a jobkit lab manifest: {exc}") from None
    for e in entries:
        if e.kind not in ("target", "base") or "/" in e.file or e.file.startswith("."):
            raise ConfigError(f"{path}: bad entry {e.file!r}")
    return entries


def verify(directory: Path, *, targets: dict[str, Target] | None = None, say: Say = _say) -> list[Entry]:
    """Every check load makes before it loads anything; returns the manifest's entries."""
    manifest = targets or load_manifest()
    entries = read_manifest(directory)
    for e in entries:
        path = directory / e.file
        if not path.is_file():
            raise ConfigError(f"{path} is missing (listed in {MANIFEST})")
        say(f"checking {e.file}")
        got = sha256_file(path)
        if got != e.sha256:
            raise ConfigError(f"{path}: sha256 {got[:16]}… does not match the manifest's {e.sha256[:16]}…: "
                              "the tarball is damaged or was changed; refused")
        if e.kind == "target":
            if e.name not in manifest:
                raise ConfigError(f"{path}: target {e.name!r} is not in this checkout's containers/manifest.json")
            want = input_hash(manifest[e.name], e.base_id)
            if e.hash != want or not e.file.endswith(f"-{want}.tar"):
                raise ConfigError(f"{path}: input hash {e.hash} is not this checkout's {want} for {e.name} "
                                  "(built from other containers/ files); refused")
    return entries


def load(directory: Path, *, targets: dict[str, Target] | None = None, say: Say = _say) -> list[tuple[Entry, str]]:
    """Load what DIRECTORY holds, after :func:`verify`; (entry, "loaded" | "up to date") each."""
    entries = verify(directory, targets=targets, say=say)
    done: list[tuple[Entry, str]] = []
    for e in entries:
        current = image_id(e.image) if e.kind == "base" else image_label(e.image, HASH_LABEL)
        if current == e.hash:
            done.append((e, "up to date"))
            continue
        say(f"loading {e.file}")
        _docker("image", "load", "-i", str(directory / e.file))
        now = image_id(e.image) if e.kind == "base" else image_label(e.image, HASH_LABEL)
        if now != e.hash:
            raise JobkitError(f"{e.file} loaded but {e.image} is {now}, not {e.hash}")
        done.append((e, "loaded"))
    return done
