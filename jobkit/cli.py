"""The ``jobkit`` command line.

Each command group lives in its own module exposing ``register(subparsers)``; this module only
assembles them and turns every :class:`~jobkit.errors.JobkitError` into a one-line message and a
non-zero exit code (never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from jobkit import __version__
from jobkit.errors import ConfigError, InvalidJobId, JobkitError

#: Modules that contribute commands, in the order they appear in ``jobkit --help``.
COMMAND_MODULES: tuple[str, ...] = ("jobkit.conformance.cli", "jobkit.runtime_cli", "jobkit.lab.cli", "jobkit.shells")

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobkit",
        description="Run jobs on remote Linux hosts and know how each job really ended.",
    )
    parser.add_argument("--version", action="version", version=f"jobkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is a job's command, verbatim (argparse's own handling of
    # `--` inside subcommands drops or rejects it).
    rest: list[str] | None = None
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    args = parser.parse_args(argv)
    if rest is not None:
        if not hasattr(args, "job_argv"):
            parser.error("unexpected arguments after --")
        args.job_argv = [*(args.job_argv or []), *rest]
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except (ConfigError, InvalidJobId) as exc:
        print(f"jobkit: error: {exc}", file=sys.stderr)
        return 2
    except JobkitError as exc:
        print(f"jobkit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jobkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
