"""The lab's targets, as declared in ``containers/manifest.json`` (one manifest the suite reads)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobkit.errors import ConfigError


def containers_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "containers"


@dataclass(frozen=True)
class Target:
    name: str
    image: str
    dockerfile: str
    base: str | None  # debootstrap suite imported as the base image, or None (registry base)
    offline: bool  # buildable on a machine with no registry
    family: str
    offers: dict[str, Any]  # what the userland offers: shell, bash, flock, sqlite3, tmux, ...
    lacks: list[str]
    description: str

    @property
    def base_image(self) -> str | None:
        return f"jobkit-base:debian-{self.base}" if self.base else None


def load_manifest(path: Path | None = None) -> dict[str, Target]:
    path = path or containers_dir() / "manifest.json"
    raw = json.loads(path.read_text())
    return {
        name: Target(
            name=name, image=t["image"], dockerfile=t["dockerfile"], base=t.get("debootstrap"),
            offline=bool(t["offline"]), family=t["family"], offers=t["offers"],
            lacks=list(t.get("lacks", [])), description=t["description"],
        )
        for name, t in raw["targets"].items()
    }


def offline_targets(*, clusters: bool = False) -> list[str]:
    """The targets buildable without a registry: single SSH hosts (what the W- and R- clauses,
    the runtime tests and the default conformance run use); with ``clusters`` also the batch
    scheduler clusters (``slurm``, ``slurm-noacct``: the S- clauses and ``tests/slurm``)."""
    return [n for n, t in load_manifest().items() if t.offline and (clusters or t.family != "slurm")]


def get_target(name: str) -> Target:
    targets = load_manifest()
    if name not in targets:
        raise ConfigError(f"unknown lab target {name!r}; known: local, {', '.join(targets)}")
    return targets[name]
