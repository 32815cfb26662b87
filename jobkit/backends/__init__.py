"""Backends: one per kind of host (see :mod:`jobkit.backends.base`)."""

from __future__ import annotations

from jobkit.backends.base import Backend, FenceOutcome, LaunchOutcome, LaunchRequest, LaunchState
from jobkit.backends.slurm import SlurmBackend
from jobkit.backends.tmux import TmuxBackend
from jobkit.errors import ConfigError

__all__ = ["SCHEDULERS", "Backend", "FenceOutcome", "LaunchOutcome", "LaunchRequest", "LaunchState",
           "SlurmBackend", "TmuxBackend", "backend_for"]

#: scheduler name -> backend class
SCHEDULERS: dict[str, type] = {"tmux": TmuxBackend, "slurm": SlurmBackend}


def backend_for(scheduler: str | None) -> Backend:
    """The backend of a host registered with ``scheduler`` (``tmux`` when unset)."""
    cls = SCHEDULERS.get(scheduler or "tmux")
    if cls is None:
        raise ConfigError(f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULERS)}")
    backend: Backend = cls()
    return backend
