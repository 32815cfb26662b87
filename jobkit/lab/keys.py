"""Keys of one lab session: the client key (written to a 0600 file for ssh/asyncssh) and
server host keys generated here, so the client can pin them before the first connection."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh


@dataclass(frozen=True)
class ClientKey:
    path: Path
    public: str  # OpenSSH public key line


def client_key(directory: Path) -> ClientKey:
    """The session's client key in ``directory`` (created on first use)."""
    path = directory / "id_ed25519"
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="jobkit-lab")
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        path.with_suffix(".pub").write_bytes(key.export_public_key())
    public = path.with_suffix(".pub").read_text().strip()
    return ClientKey(path, public)


@dataclass(frozen=True)
class HostKey:
    private_openssh: str
    public: str
    key: asyncssh.SSHKey


def host_key() -> HostKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return HostKey(key.export_private_key().decode(), key.export_public_key().decode().strip(), key)
