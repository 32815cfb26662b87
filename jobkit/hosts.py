"""How jobkit names and reaches a host: the contract between the lab, the transport and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class HostSpec:
    """Everything needed to open a pinned, key-authenticated SSH connection to a host.

    ``known_host_key`` is the server's public host key in OpenSSH format; connections verify it
    (no trust-on-first-use in library code paths). ``base_dir`` is where the wrapper keeps
    ``server.db`` and ``jobs/`` on that host (``~/.jobkit`` when None).
    """

    name: str
    address: str
    port: int
    user: str
    private_key: Path
    known_host_key: str | None
    base_dir: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    scheduler: str = "tmux"  # the backend that runs its jobs (jobkit.backends)
    partition: str | None = None  # a batch scheduler's default partition

    @property
    def display(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"
