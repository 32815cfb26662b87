"""``jobkit conformance --keep-failed``: the lab containers of targets where a clause failed stay
up after the run, with a way in (an ssh line) and a way out (``jobkit lab down ID``); the others
are removed as usual, and all of them are when the run ends early (an error, Ctrl-C)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from jobkit.lab import LABEL, Lab, LabHost
from jobkit.lab.session import kept_root, remove_workdir


def failed_targets(results: Iterable[Any]) -> list[str]:
    """The targets of results that failed or errored, in order."""
    return list(dict.fromkeys(r.target for r in results if r.outcome in ("FAIL", "ERROR", "error")))


class KeepFailed:
    """Starts lab targets kept (``Lab.start(keep=True)``) and, once the outcome is known, keeps
    only those where something failed."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.hosts: dict[str, LabHost] = {}
        self.kept: dict[str, LabHost] = {}
        lab.on_close(self.discard_rest)

    def start(self, name: str) -> LabHost:
        host = self.lab.start(name, keep=True)
        self.hosts[name] = host
        return host

    def decide(self, failed_targets: Iterable[str]) -> None:
        """Keep the hosts of FAILED_TARGETS (with a record beside their key, as `lab up` writes);
        remove the others now."""
        failed = set(failed_targets)
        for name, host in list(self.hosts.items()):
            if name in failed:
                self.kept[name] = host
                record = {"target": name, "container": host.container_id, "port": host.spec.port,
                          "key": str(host.spec.private_key), "host_key": host.spec.known_host_key,
                          "ssh": host.ssh_command()}
                (host.spec.private_key.parent / "container.json").write_text(json.dumps(record, indent=2))
        self.discard_rest()

    def discard_rest(self) -> None:
        for name in [n for n in self.hosts if n not in self.kept]:
            _discard(self.hosts.pop(name))

    def summary(self, failed_targets: Iterable[str]) -> str:
        lines = []
        for name in dict.fromkeys(failed_targets):
            host = self.kept.get(name)
            if host is None:
                why = ("it runs inside this process" if name == "local"
                       else "it is not a lab container" if name.startswith("ssh://") else "it did not start")
                lines.append(f"{name}: not kept ({why})")
                continue
            short = (host.container_id or "")[:12]
            lines += [f"{name}: kept for inspection (container {short}); jobs and logs under ~/.jobkit-conformance",
                      f"  log in:  {host.ssh_command()}",
                      f"  remove:  jobkit lab down {short}"]
        return "\n".join(lines)


def _discard(host: LabHost) -> None:
    """Remove a kept host's container and its key directory."""
    keydir = ""
    if host.container is not None:
        labels: dict[str, Any] = host.container.get_wrapped_container().labels or {}
        keydir = labels.get(f"{LABEL}.keydir", "")
    host.stop()
    if keydir and "/" not in keydir and keydir not in (".", ".."):
        remove_workdir(kept_root() / keydir)
