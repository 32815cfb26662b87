"""What a person types into ``jobkit``, checked once, in one place, before anything starts.

Every function raises :class:`~jobkit.errors.ConfigError` with a message that says what is wrong
and what to give instead (the CLI prints it as one line and exits 2); the ``argparse`` types
raise :class:`argparse.ArgumentTypeError` for the same effect at parse time.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import stat
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import asyncssh

from jobkit.errors import ConfigError

#: refuse to read more than this from a file that should hold a key or known_hosts lines
_MAX_KEY_BYTES = 1 << 20
_MAX_KNOWN_HOSTS_BYTES = 16 << 20
#: preferred host key algorithms when a known_hosts file has several keys for the host
_KEY_PREFERENCE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                   "ssh-rsa")


# --- argparse types -----------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """An integer >= 1 (e.g. how many things at once)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def count(text: str) -> int:
    """A whole number >= 0 (how many lines or bytes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0 (a timeout)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds greater than 0, not {text!r}")
    return value


# --- hosts --------------------------------------------------------------------------------------
def ssh_url(url: str) -> tuple[str, str, int]:
    """``ssh://user@host[:port]`` → (user, host, port); IPv6 addresses in brackets."""
    user, host, port = ssh_url_parts(url, need_user=True)
    assert user is not None
    return user, host, port or 22


def ssh_url_parts(url: str, *, need_user: bool = False) -> tuple[str | None, str, int | None]:
    """``ssh://[user@]host[:port]`` → (user or None, host, port or None): what the address gives
    (an alias of ``~/.ssh/config`` fills in the rest)."""
    shape = "ssh://user@host[:port]" if need_user else "ssh://[user@]host[:port]"
    try:
        u = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced '[' for IPv6
        raise ConfigError(f"host address must look like {shape}, not {url!r}: {exc}") from None
    if u.scheme != "ssh":
        raise ConfigError(f"host address must look like {shape}, not {url!r}")
    if u.password is not None:
        raise ConfigError(f"no password in the address {url!r}: jobkit logs in with a key only (--key)")
    if need_user and not u.username:
        raise ConfigError(f"host address {url!r} names no user: {shape}")
    if u.username is not None and not u.username:
        raise ConfigError(f"host address {url!r} has an empty user before '@': {shape}")
    if not u.hostname:
        raise ConfigError(f"host address {url!r} names no host: {shape}")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise ConfigError(f"host address {url!r} has a path or query: {shape}")
    if any(c.isspace() or not c.isprintable() for c in (u.username or "") + u.hostname):
        raise ConfigError(f"host address {url!r} has spaces or control characters in it")
    try:
        port = u.port
    except ValueError:
        port_text = u.netloc.rsplit("]", 1)[-1].rpartition(":")[2]
        raise ConfigError(f"port {port_text!r} in {url!r} is not a port number (1-65535)") from None
    if u.netloc.endswith(":"):
        raise ConfigError(f"empty port in {url!r}: leave out the ':' for port 22")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"port {port} in {url!r} is not a port number (1-65535)")
    return u.username, u.hostname, port


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is too large ({limit // 1024} KiB at most): is it the right file?")
    return data


def private_key(path_text: str) -> Path:
    """A private key file asyncssh can use as it is (no passphrase), resolved to an absolute path.

    The path is kept (the transport reads it on every connection), so it must be a regular file."""
    path = Path(path_text).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"private key {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot use private key {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"private key {path} is a directory, not a key file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"private key {path} is not a regular file")
    data = _read_limited(path, _MAX_KEY_BYTES, "private key")
    try:
        asyncssh.import_private_key(data)
    except asyncssh.KeyImportError as exc:
        if "assphrase" in str(exc):
            raise ConfigError(f"private key {path} is passphrase-protected, and passphrase-protected keys are not "
                              "supported: use an unencrypted key (e.g. a dedicated one: ssh-keygen -N '')") from None
        try:
            asyncssh.import_public_key(data)
        except (asyncssh.KeyImportError, ValueError):
            pass
        else:
            hint = f" (the private key is probably {path.with_suffix('')})" if path.suffix == ".pub" else ""
            raise ConfigError(f"{path} is a public key: --key needs the private key{hint}") from None
        raise ConfigError(f"{path} is not a private key asyncssh can read ({exc}): give an OpenSSH or PEM "
                          "private key") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a private key asyncssh can read ({exc})") from None
    return path.resolve()


def host_public_key(text: str) -> str:
    """An OpenSSH public key line (``ssh-ed25519 AAAA... [comment]``) → ``type base64``."""
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
        raise ConfigError(f"the host key {text.strip()[:60]!r} is not an OpenSSH public key "
                          f"('ssh-ed25519 AAAA...'): {exc}") from None
    return " ".join(key.export_public_key().decode().split()[:2])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_key_from_known_hosts(path_text: str, host: str, port: int) -> str:
    """The host key for ``host``/``port`` in a known_hosts file (hashed names, ``[host]:port``
    and wildcard patterns as OpenSSH writes them; ``@revoked`` keys excluded), as ``type base64``.
    A pipe (``<(ssh-keyscan host)``) is fine: the file is read once."""
    path = Path(path_text).expanduser()
    data = _read_limited(path, _MAX_KNOWN_HOSTS_BYTES, "known_hosts file")
    if b"\0" in data:
        raise ConfigError(f"{path} is not a known_hosts file (binary data)")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a known_hosts file (not UTF-8 text)") from None
    try:
        known = asyncssh.import_known_hosts(text)
        # as OpenSSH: an entry without a port is for port 22 only (asyncssh's match() would fall
        # back to it for any port, pinning the key of another server on the same machine)
        if port == 22:
            keys, _ca, revoked, *_ = known.match(host, host if _is_ip(host) else "", None)
        else:
            keys, _ca, revoked, *_ = known.match(f"[{host}]:{port}", "", None)
    except (ValueError, TypeError, asyncssh.KeyImportError) as exc:
        raise ConfigError(f"{path} is not a known_hosts file: {exc}") from None
    revoked_data = {k.public_data for k in revoked}
    lines = [" ".join(k.export_public_key().decode().split()[:2]) for k in keys if k.public_data not in revoked_data]
    where = host if port == 22 else f"[{host}]:{port}"
    if not lines:
        try:
            asyncssh.import_public_key(text.strip())
        except (asyncssh.KeyImportError, ValueError, TypeError):
            pass
        else:
            raise ConfigError(f"{path} holds a bare public key, not known_hosts lines ('HOST KEYTYPE KEY'): "
                              "give it with --known-host-key, or use a known_hosts file")
        raise ConfigError(f"no host key for {where} in {path} (get it with: ssh-keyscan -p {port} {host}, "
                          "and check it)")
    lines.sort(key=lambda ln: _KEY_PREFERENCE.index(ln.split()[0]) if ln.split()[0] in _KEY_PREFERENCE
               else len(_KEY_PREFERENCE))
    return lines[0]


# --- local files --------------------------------------------------------------------------------
def writable_dir(path_text: str, what: str) -> Path:
    """A directory jobkit can write to, created if missing: checked by writing a file there (the
    permission bits lie for root and on read-only mounts)."""
    path = Path(path_text).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".jobkit-write-test-")
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise ConfigError(f"{what} {path} is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} is not writable: {exc.strerror or exc}") from None
    return path


def text_file(path_text: str, what: str) -> Path:
    """A readable UTF-8 text file (a wrapper script, a schema)."""
    path = Path(path_text).expanduser()
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory, not a file")
    data = _read_limited(path, 16 << 20, what)
    try:
        data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    if b"\0" in data:
        raise ConfigError(f"{what} {path} is not text (binary data)")
    return path
