"""Hosts the way SSH users already have them: an alias of ``~/.ssh/config`` and the host keys of
``~/.ssh/known_hosts``.

``jobkit hosts add NAME ssh://ALIAS`` resolves ``ALIAS`` as OpenSSH would for ``ssh ALIAS``
(through asyncssh's parser of OpenSSH client configs): ``HostName``, ``User``, ``Port``,
``IdentityFile``, ``UserKnownHostsFile`` and ``HostKeyAlias``; what the address itself gives
(``user@``, ``:port``) wins, as on ssh's command line. jobkit reaches a host directly and with a
key only: a config that sends the host through ``ProxyJump`` or ``ProxyCommand`` is refused with
a message rather than silently bypassed. The result is pinned in the store once (address, port,
user, key file, host key); a later change of the host key is refused, never accepted silently.

Nothing here connects to a host; every problem is a :class:`~jobkit.errors.ConfigError`.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
from asyncssh.config import SSHClientConfig

from jobkit.errors import ConfigError
from jobkit.userinput import host_key_from_known_hosts, private_key

__all__ = ["DEFAULT_IDENTITIES", "SshHost", "default_config_path", "pick_host_key", "pick_identity", "resolve"]

#: the identities ssh tries when the config names none (in its order, those jobkit can use)
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")


def _ssh_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".ssh"


def default_config_path() -> Path:
    return _ssh_dir() / "config"


@dataclass(frozen=True)
class SshHost:
    """What ``ssh ALIAS`` would use, as far as jobkit needs it."""

    alias: str
    user: str
    address: str
    port: int
    identity_files: list[Path] = field(default_factory=list)  # the config's, in its order
    known_hosts_files: list[Path] = field(default_factory=list)
    host_key_alias: str | None = None
    config: Path | None = None  # the file it came from (None: no config file)


def _paths(value: object) -> list[Path]:
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    return [Path(os.path.expanduser(str(v))) for v in items if str(v).lower() != "none"]


def resolve(alias: str, *, user: str | None = None, port: int | None = None,
            config: Path | None = None) -> SshHost:
    """``alias`` as ``ssh [-l user] [-p port] alias`` would reach it with ``config`` (default
    ``~/.ssh/config`` when it exists; a config given explicitly must exist)."""
    path = config if config is not None else default_config_path()
    if config is not None and not path.is_file():
        raise ConfigError(f"SSH config {path} does not exist or is not a file")
    options: dict[str, object] = {}
    if path.is_file():
        try:
            loaded = SSHClientConfig.load(None, [path], False, False, False, getpass.getuser(),
                                          user if user is not None else (), alias, port if port is not None else ())
        except asyncssh.ConfigParseError as exc:
            raise ConfigError(f"SSH config {path}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read SSH config {path}: {exc.strerror or exc}") from None
        options = {k: loaded.get(k) for k in ("Hostname", "User", "Port", "IdentityFile", "UserKnownHostsFile",
                                              "HostKeyAlias", "ProxyJump", "ProxyCommand")}
    for hop in ("ProxyJump", "ProxyCommand"):
        value = options.get(hop)
        if value not in (None, "", "none", ["none"], ("none",)):
            raise ConfigError(f"{path} sends {alias} through {hop}, which jobkit does not follow: give the address "
                              "of a host jobkit can reach directly (ssh://user@host:port)")
    address = str(options.get("Hostname") or alias)
    got_port = options.get("Port")
    final_port = port if port is not None else int(got_port) if isinstance(got_port, int | str) and got_port else 22
    if not 1 <= final_port <= 65535:
        raise ConfigError(f"port {final_port} for {alias} in {path} is not a port number (1-65535)")
    final_user = user if user is not None else str(options.get("User") or getpass.getuser())
    alias_key = options.get("HostKeyAlias")
    return SshHost(alias, final_user, address, final_port, _paths(options.get("IdentityFile")),
                   _paths(options.get("UserKnownHostsFile")), str(alias_key) if alias_key else None,
                   path if path.is_file() else None)


def pick_identity(host: SshHost, key: str | None) -> Path:
    """``--key``, else the config's first ``IdentityFile`` that exists, else ssh's defaults
    (``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa``): the first one jobkit can use (a key with a
    passphrase cannot be: jobkit runs unattended and uses no agent)."""
    if key is not None:
        return private_key(key)
    candidates = host.identity_files or [_ssh_dir() / n for n in DEFAULT_IDENTITIES]
    present = [p for p in candidates if p.exists()]
    if not present:
        where = ", ".join(str(p) for p in candidates)
        raise ConfigError(f"no private key for {host.alias}: none of {where} exists (give one with --key)")
    reasons = []
    for p in present:
        try:
            return private_key(str(p))
        except ConfigError as exc:
            reasons.append(str(exc))
    raise ConfigError(f"no usable private key for {host.alias}: " + "; ".join(reasons) + " (give one with --key)")


def pick_host_key(host: SshHost, known_hosts: str | None) -> tuple[str, Path]:
    """The host key ``ssh`` would check for this host: from ``--known-hosts FILE``, else the
    config's ``UserKnownHostsFile``, else ``~/.ssh/known_hosts`` (and ``known_hosts2``), looked
    up under ``HostKeyAlias`` when set, else the address and port as OpenSSH writes them."""
    name, port = (host.host_key_alias, 22) if host.host_key_alias else (host.address, host.port)
    if known_hosts is not None:
        return host_key_from_known_hosts(known_hosts, name, port), Path(known_hosts).expanduser()
    files = host.known_hosts_files or [_ssh_dir() / "known_hosts", _ssh_dir() / "known_hosts2"]
    present = [p for p in files if p.is_file()]
    misses = []
    for p in present:
        try:
            return host_key_from_known_hosts(str(p), name, port), p
        except ConfigError as exc:
            misses.append(str(exc))
    where = name if port == 22 else f"[{name}]:{port}"
    if not present:
        raise ConfigError(f"no known_hosts file ({', '.join(str(p) for p in files)}) to take the host key of {where} "
                          f"from: connect once with ssh, or give --known-hosts FILE or --known-host-key")
    raise ConfigError("; ".join(misses))


def fingerprint(key_line: str) -> str:
    """``ssh-ed25519 SHA256:...`` for a ``type base64`` key line."""
    try:
        key = asyncssh.import_public_key(key_line)
    except (asyncssh.KeyImportError, ValueError, TypeError):
        return key_line[:40]
    return f"{key_line.split()[0]} {key.get_fingerprint()}"
