"""What a lab session leaves on this machine, and how it is taken away again.

A session's work directory holds its private client key and the private ``HOME`` of each
``local`` target (tmux sockets, ``server.db``, job files). It is created ``0700`` under the
user's cache directory (never in ``/tmp``: a private key must not be left in a shared, world-
listable place), records its owner, and is removed with everything the session started in it
(:func:`remove_workdir`: every tmux server whose ``tmux.sock`` is under it, then every process
still running in it) when the session ends. A process that dies without cleaning up (SIGKILL, a
power cut) leaves its directory behind: the next session reaps it (:func:`reap_stale`) once its
owner is provably gone, the rule the lab's containers follow too (:class:`Owner`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from jobkit.errors import ConfigError
from jobkit.lab.build import cache_dir
from jobkit.owner import OWNER_FILE, Owner, boot_id, pid_alive

__all__ = ["OWNER_FILE", "Owner", "boot_id", "create_kept_dir", "create_workdir", "kept_root", "lab_root",
           "pid_alive", "reap_kept_dirs", "reap_stale", "remove_workdir", "sessions_root", "stop_processes"]
#: a directory without an owner record younger than this may still be being created
_UNOWNED_GRACE = 60.0


def lab_root() -> Path:
    return cache_dir() / "lab"


def sessions_root() -> Path:
    return lab_root() / "sessions"


def kept_root() -> Path:
    """Keys of containers started by ``jobkit lab up``: they outlive the session that made them."""
    return lab_root() / "kept"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid == os.getuid() and stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)


def create_workdir(kind: str, root: Path | None = None) -> Path:
    """A new private (0700) work directory owned by this process, under the lab's cache
    directory; reaps the directories of sessions whose owner is gone first."""
    root = root or sessions_root()
    try:
        _private_dir(root)
        reap_stale(root)
        path = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))  # mkdtemp: 0700
        Owner.current().write(path)
    except OSError as exc:
        raise ConfigError(f"cannot create a lab work directory under {root}: {exc.strerror or exc} "
                          "(set JOBKIT_CACHE_DIR to a writable directory)") from exc
    return path


def reap_stale(root: Path | None = None) -> int:
    """Remove the work directories under ``root`` whose owner is gone; return how many."""
    root = root or sessions_root()
    try:
        entries = list(root.iterdir())
    except OSError:
        return 0
    removed = 0
    for path in entries:
        if not path.is_dir() or path.is_symlink():
            continue
        owner = Owner.read(path)
        if owner is None:
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime < _UNOWNED_GRACE:
                    continue  # being created right now
            owner = Owner(0)
        if owner.alive():
            continue
        remove_workdir(path)
        removed += 1
    return removed


def tmux_sockets(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not Path(dirpath, d).is_symlink()]
        for name in filenames:
            p = Path(dirpath, name)
            with contextlib.suppress(OSError):
                if name == "tmux.sock" and stat.S_ISSOCK(p.lstat().st_mode):
                    found.append(p)
    return found


def stop_tmux_servers(root: Path) -> int:
    """``tmux -S SOCK kill-server`` for every ``tmux.sock`` under ``root``; return how many."""
    if shutil.which("tmux") is None:
        return 0
    stopped = 0
    for sock in tmux_sockets(root):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            rc = subprocess.run(["tmux", "-S", str(sock), "kill-server"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
                                check=False).returncode
            stopped += rc == 0
    return stopped


def processes_in(root: Path) -> list[int]:
    """Processes of this user whose working directory is ``root`` or under it: what a session
    started there (local targets run every command in their private HOME; tmux servers and
    their jobs inherit it)."""
    try:
        target = os.path.realpath(root)
    except OSError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        cwd = cwd.removesuffix(" (deleted)")
        if cwd == target or cwd.startswith(target + os.sep):
            pids.append(int(entry.name))
    return pids


def stop_processes(root: Path, timeout: float = 5.0) -> None:
    """Stop what a session started under ``root``: its tmux servers (kill-server: the jobs
    get SIGHUP, as from a closed terminal), then SIGKILL whatever still runs there."""
    stop_tmux_servers(root)
    deadline = time.monotonic() + timeout
    while pids := processes_in(root):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)  # poll until the kernel has torn them down


def remove_workdir(path: Path, timeout: float = 5.0) -> None:
    """Stop everything the session started in ``path``, then remove it (keys included)."""
    if not path.exists():
        return
    stop_processes(path, timeout)
    deadline = time.monotonic() + timeout
    while True:  # a process that was exiting may still write a file in it
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def create_kept_dir(name: str) -> Path:
    root = kept_root()
    try:
        _private_dir(root)
        path = root / name
        path.mkdir(mode=0o700)
        Owner.current().write(path)
    except OSError as exc:
        raise ConfigError(f"cannot create {root / name}: {exc.strerror or exc}") from exc
    return path


def reap_kept_dirs(referenced: set[str]) -> int:
    """Remove the key directories of ``lab up`` containers that no longer exist (``referenced``:
    the names containers still point at), unless their creator is still running."""
    removed = 0
    try:
        entries = list(kept_root().iterdir())
    except OSError:
        return 0
    for path in entries:
        if path.name in referenced or not path.is_dir() or path.is_symlink():
            continue
        owner = Owner.read(path)
        if owner is not None and owner.alive():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed
