"""``jobkit shells``: check the wrapper across every POSIX shell on this machine.

Runs the wrapper's bats suite (``tests/bats/wrapper.bats``) once per shell, several shells at a
time, and prints a scenario x shell table. zsh is run as ``sh`` (through a symlink named ``sh``,
which puts it in POSIX mode). Needs a checkout with ``node_modules`` (``scripts/setup.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from jobkit.errors import ConfigError

#: name -> command line; zsh is run as sh from a temporary symlink.
SHELLS: dict[str, list[str]] = {
    "dash": ["dash"],
    "bash": ["bash", "--posix"],
    "busybox-ash": ["busybox", "sh"],
    "mksh": ["mksh"],
    "yash": ["yash"],
    "zsh-as-sh": ["@zsh-as-sh"],
    "posh": ["posh"],
    "ksh93": ["ksh93"],
}

_TAP = re.compile(r"^(ok|not ok) (\d+) (.*?)(?: # (skip|SKIP).*)?$")


@dataclass
class ShellRun:
    shell: str
    results: dict[str, str] = field(default_factory=dict)  # test name -> ok | FAIL | skip
    seconds: float = 0.0
    output: str = ""
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.results) and all(
            r == "ok" for r in self.results.values()
        )


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _bats(root: Path) -> Path:
    bats = root / "node_modules" / "bats" / "bin" / "bats"
    if not bats.is_file():
        raise ConfigError(f"bats not found at {bats}; run scripts/setup.sh first")
    return bats


def _command(name: str, scratch: Path) -> list[str] | None:
    argv = SHELLS[name]
    if argv[0] == "@zsh-as-sh":
        zsh = shutil.which("zsh")
        if zsh is None:
            return None
        link = scratch / "zsh-as-sh" / "sh"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(zsh)
        return [str(link)]
    return argv if shutil.which(argv[0]) else None


def run_shell(name: str, root: Path, scratch: Path, filter_: str | None) -> ShellRun:
    run = ShellRun(shell=name)
    argv = _command(name, scratch)
    if argv is None:
        run.error = "not installed"
        return run
    env = dict(os.environ, JOBKIT_TEST_SHELL=" ".join(argv))
    cmd = [str(_bats(root)), "--tap", str(root / "tests" / "bats" / "wrapper.bats")]
    if filter_:
        cmd += ["--filter", filter_]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, errors="replace",
                          check=False)  # a failing scenario may print any bytes
    run.seconds = time.monotonic() - start
    run.output = proc.stdout + proc.stderr
    for line in proc.stdout.splitlines():
        m = _TAP.match(line)
        if m:
            run.results[m.group(3)] = "skip" if m.group(4) else ("ok" if m.group(1) == "ok" else "FAIL")
    if not run.results:
        run.error = f"bats produced no results (exit {proc.returncode})"
    return run


def render(runs: list[ShellRun]) -> str:
    names: list[str] = []
    for r in runs:
        names.extend(n for n in r.results if n not in names)
    width = max([len(n) for n in names] + [8])
    width = min(width, 78)
    cols = [r.shell for r in runs]
    lines = ["scenario".ljust(width) + "  " + "  ".join(c.rjust(max(len(c), 4)) for c in cols)]
    for n in names:
        cells = []
        for r in runs:
            v = r.results.get(n, "-") if r.error is None else "n/a"
            cells.append(v.rjust(max(len(r.shell), 4)))
        label = n if len(n) <= width else n[: width - 1] + "…"
        lines.append(label.ljust(width) + "  " + "  ".join(cells))
    lines.append("")
    for r in runs:
        status = "PASS" if r.passed else ("SKIPPED: " + r.error if r.error == "not installed" else "FAIL")
        passed = sum(1 for v in r.results.values() if v == "ok")
        lines.append(f"{r.shell:<12} {status:<6} {passed}/{len(r.results)} scenarios in {r.seconds:.0f}s")
    return "\n".join(lines)


def main_shells(args: argparse.Namespace) -> int:
    root = repo_root()
    _bats(root)
    chosen = args.shell or list(SHELLS)
    unknown = [s for s in chosen if s not in SHELLS]
    if unknown:
        raise ConfigError(f"unknown shell(s) {', '.join(unknown)}; known: {', '.join(SHELLS)}")
    with tempfile.TemporaryDirectory(prefix="jobkit-shells-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        scratch = Path(tmp)
        runs = list(pool.map(lambda s: run_shell(s, root, scratch, args.filter), chosen))
    print(render(runs))
    if args.json:
        Path(args.json).write_text(
            json.dumps([{"shell": r.shell, "results": r.results, "seconds": r.seconds, "error": r.error}
                        for r in runs], indent=2)
        )
    failed = [r for r in runs if not r.passed and r.error != "not installed"]
    for r in failed:
        print(f"\n--- {r.shell} ---\n{r.output}", file=sys.stderr)
    missing = [r.shell for r in runs if r.error == "not installed"]
    if missing and args.require_all:
        print(f"jobkit shells: not installed: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("shells", help="check the wrapper on every POSIX shell here (bats matrix)")
    p.add_argument("--shell", action="append", help=f"only this shell (repeatable): {', '.join(SHELLS)}")
    p.add_argument("--filter", help="only scenarios whose name matches this regex")
    p.add_argument("--jobs", type=int, default=4, help="shells run at once (default 4)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--require-all", action="store_true", help="fail when a shell is not installed")
    p.set_defaults(handler=main_shells)
