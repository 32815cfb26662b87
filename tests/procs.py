"""Child processes of tests, ended and closed on every path."""

from __future__ import annotations

import subprocess
from typing import Any


def finish(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc`` if it still runs, reap it, and close its pipes: a test that failed half-way
    must not leave a process or an open pipe behind (an unclosed pipe is a ResourceWarning that
    fails whichever test the garbage collector happens to run in)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()
