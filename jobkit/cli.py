"""The ``jobkit`` command line.

Each command group lives in its own module exposing ``register(subparsers)``; this module only
assembles them and turns every :class:`~jobkit.errors.JobkitError` into a one-line message and a
non-zero exit code (never a traceback): bad input and unusable configuration exit 2, everything
else 1. SIGTERM and SIGHUP stop a command the way Ctrl-C does, so it cleans up on the way out
(lab sessions remove their work directories and stop what they started); the exit code is then
128 + the signal number.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn

from jobkit import __version__
from jobkit.errors import ConfigError, InvalidJobId, JobkitError, StoreError

#: Modules that contribute commands, in the order they appear in ``jobkit --help``.
COMMAND_MODULES: tuple[str, ...] = ("jobkit.conformance.cli", "jobkit.runtime_cli", "jobkit.lab.cli", "jobkit.shells")

Handler = Callable[[argparse.Namespace], int]
#: errors of the user's input or configuration: exit 2
USAGE_ERRORS: tuple[type[JobkitError], ...] = (ConfigError, InvalidJobId, StoreError)


class Parser(argparse.ArgumentParser):
    """argparse with jobkit's error format: one line ``jobkit: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("jobkit").strip()
        where = f"{command}: " if command else ""
        hint = f" (see: {self.prog} --help)"
        self.exit(2, f"jobkit: error: {where}{message}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="jobkit",
        description="Run jobs on remote Linux hosts and know how each job really ended.",
    )
    parser.add_argument("--version", action="version", version=f"jobkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


class _Signalled:
    signum: int | None = None


@contextlib.contextmanager
def _stop_signals_interrupt(state: _Signalled) -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP act as SIGINT (KeyboardInterrupt, or asyncio's
    cancellation of the running task), so ``finally`` blocks and context managers run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        state.signum = signum
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not on_signal:
            handler(signal.SIGINT, frame)  # asyncio's handler cancels the main task, the default raises
            return
        raise KeyboardInterrupt

    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue  # nohup: stays ignored
        previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is a job's command, verbatim (argparse's own handling of
    # `--` inside subcommands drops or rejects it).
    rest: list[str] | None = None
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    try:
        args = parser.parse_args(argv)
        if rest is not None and not hasattr(args, "job_argv"):
            parser.error("unexpected arguments after --")
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if rest is not None:
        args.job_argv = [*(args.job_argv or []), *rest]
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    state = _Signalled()
    try:
        with _stop_signals_interrupt(state):
            return handler(args)
    except USAGE_ERRORS as exc:
        print(f"jobkit: error: {exc}", file=sys.stderr)
        return 2
    except JobkitError as exc:
        print(f"jobkit: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the machine's, not jobkit's: a full disk, a vanished directory
        print(f"jobkit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if state.signum is not None:
            print(f"jobkit: terminated ({signal.Signals(state.signum).name})", file=sys.stderr)
            return 128 + state.signum
        print("jobkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
