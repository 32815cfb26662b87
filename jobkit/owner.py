"""Who owns a resource left on this machine (a saga, a lab work directory, a container), and
whether that owner is certainly gone: a process is named by pid, start time, boot id, host and
pid namespace, so a pid reused by a later process is never taken for the owner."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

OWNER_FILE = "owner.json"


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """The process that owns a work directory or a container.

    It is *gone* only when that is certain: same machine (hostname), same pid namespace, and
    either another boot or no process with that pid and start time. An owner on another machine
    or in another pid namespace (a container sharing the Docker engine) cannot be checked from
    here and counts as alive. Empty fields (records of older jobkit versions) are not compared.
    """

    pid: int
    boot: str = ""
    start: str = ""
    host: str = ""
    pidns: str = ""

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(pid, boot_id(), _start_time(pid) or "", socket.gethostname(), _pid_namespace())

    def alive(self) -> bool:
        if self.host and self.host != socket.gethostname():
            return True  # another machine's process: cannot tell
        if self.boot and self.boot != boot_id():
            return False  # this machine rebooted since
        if self.pidns and self.pidns != _pid_namespace():
            return True  # another pid namespace: its pids mean nothing here
        if not pid_alive(self.pid):
            return False
        return not self.start or _start_time(self.pid) in (None, self.start)  # pid reused: gone

    def as_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "boot": self.boot, "start": self.start, "host": self.host, "pidns": self.pidns}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Owner:
        pid = data.get("pid")
        return cls(pid if isinstance(pid, int) else 0, str(data.get("boot", "")), str(data.get("start", "")),
                   str(data.get("host", "")), str(data.get("pidns", "")))

    # --- as container labels --------------------------------------------------------------
    def labels(self, prefix: str) -> dict[str, str]:
        return {f"{prefix}.pid": str(self.pid), f"{prefix}.boot": self.boot, f"{prefix}.started": self.start,
                f"{prefix}.hostname": self.host, f"{prefix}.pidns": self.pidns}

    @classmethod
    def from_labels(cls, labels: dict[str, str], prefix: str) -> Owner:
        try:
            pid = int(labels.get(f"{prefix}.pid", "0"))
        except ValueError:
            pid = 0
        return cls(pid, labels.get(f"{prefix}.boot", ""), labels.get(f"{prefix}.started", ""),
                   labels.get(f"{prefix}.hostname", ""), labels.get(f"{prefix}.pidns", ""))

    # --- as a file ------------------------------------------------------------------------
    def write(self, directory: Path) -> None:
        data = {"pid": self.pid, "boot": self.boot, "start": self.start, "host": self.host, "pidns": self.pidns}
        tmp = directory / f".{OWNER_FILE}.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(directory / OWNER_FILE)

    @classmethod
    def read(cls, directory: Path) -> Owner | None:
        try:
            data = json.loads((directory / OWNER_FILE).read_text())
            return cls(int(data["pid"]), str(data.get("boot", "")), str(data.get("start", "")),
                       str(data.get("host", "")), str(data.get("pidns", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
