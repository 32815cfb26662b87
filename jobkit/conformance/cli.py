"""``jobkit conformance``: check a wrapper, clause by clause, on lab targets and real hosts."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from jobkit import wrapper_dir
from jobkit.conformance import gate
from jobkit.conformance.clauses import CLAUSES, needs
from jobkit.conformance.report import github_annotations, github_summary, terminal, write_all
from jobkit.conformance.runner import CLAUSE_TIMEOUT, DEFAULT_BASE, ERROR, PASS, Result, TargetSpec, run_all
from jobkit.errors import ConfigError, JobkitError
from jobkit.hosts import HostSpec
from jobkit.userinput import host_key_from_known_hosts, positive_int, private_key, ssh_url, text_file, writable_dir

LABELS = {"busybox": "busybox (BusyBox userland, Alpine role)"}


def default_targets() -> list[str]:
    from jobkit.lab import docker_available, offline_targets

    return ["local", *offline_targets()] if docker_available() else ["local"]


def ssh_target(url: str, key: str | None, known_hosts: str | None) -> HostSpec:
    """A real host given as ``ssh://user@host[:port]``, with its key and pinned host key checked."""
    user, address, port = ssh_url(url)
    if not key or not known_hosts:
        raise ConfigError("a real host needs --key and --known-hosts (its host key is pinned, never trusted blindly)")
    return HostSpec(url, address, port, user, private_key(key), host_key_from_known_hosts(known_hosts, address, port))


def main_conformance(args: argparse.Namespace) -> int:
    from jobkit.lab import Lab, docker_available, engine
    from jobkit.lab.build import HASH_LABEL, build, image_label
    from jobkit.lab.keep import KeepFailed, failed_targets
    from jobkit.lab.targets import load_manifest
    from jobkit.transport_ssh import SSHTransport

    if getattr(args, "mutate", False):
        from jobkit.conformance.mutate import main_mutate
        return main_mutate(args)
    if args.command:
        if args.command[0] != "diff" or len(args.command) != 3:
            raise ConfigError("usage: jobkit conformance [options] | jobkit conformance diff OLD.json NEW.json")
        return main_diff(args.command[1], args.command[2])
    # Everything the user gave is checked before anything starts (a lab, a build, a run).
    from jobkit.lab.slurm import is_slurm_target

    given = list(dict.fromkeys(t.strip() for raw in (args.target or []) for t in raw.split(",") if t.strip()))
    if any(is_slurm_target(n) for n in given):  # a scheduler's cluster: the S- clauses
        if not all(is_slurm_target(n) for n in given):
            raise ConfigError("SLURM targets (slurm, slurm-noacct) run the S- clauses: give them without others")
        return _main_slurm(args, given)
    chosen = gate.select(CLAUSES, args.clause, args.skip_clause)
    if args.list:
        print(list_text(chosen))
        return 0
    names = list(dict.fromkeys(t.strip() for raw in (args.target or []) for t in raw.split(",") if t.strip()))
    if args.rerun_failed:
        pairs = gate.failed_pairs(gate.load_report(args.rerun_failed))
        if not names:  # where something failed (and only there)
            names = list(dict.fromkeys(t for _, t in pairs))
        pairs = [(c, t) for c, t in pairs if t in names and c in {x.id for x in chosen}]
        if not pairs:
            print(f"conformance: nothing failed in {args.rerun_failed} on the chosen targets and clauses: "
                  "nothing to rerun")
            return gate.EXIT_OK
        names = [n for n in names if n in {t for _, t in pairs}]
        chosen = [c for c in chosen if c.id in {x for x, _ in pairs}]
    names = names or default_targets()
    waivers = gate.load_waivers(args.waivers) if args.waivers else []
    wrapper = text_file(args.wrapper or str(wrapper_dir() / "job_wrapper.sh"), "wrapper")
    schema = text_file(args.schema or str(wrapper_dir() / "server_schema.sql"), "schema")
    manifest = load_manifest()
    real: dict[str, HostSpec] = {}
    for name in names:
        if name.startswith("ssh://"):
            real[name] = ssh_target(name, args.key, args.known_hosts)
        elif name != "local" and name not in manifest:
            raise ConfigError(f"unknown target {name!r}; lab targets: local, {', '.join(manifest)}")
        elif name != "local" and not manifest[name].offline and not image_label(manifest[name].image, HASH_LABEL):
            raise ConfigError(f"target {name} needs an image registry to build ({manifest[name].dockerfile}); "
                              "build it where one is reachable, or choose an offline target")
    containers = [n for n in names if n != "local" and n not in real]
    if containers and not docker_available():
        raise ConfigError(f"target(s) {', '.join(containers)} need a Docker engine, and none answers")
    engine_line = None
    if containers:
        try:
            engine_line = engine().describe()
        except Exception as exc:  # it answered just now: the run goes on, without the description
            print(f"conformance: the engine could not be described: {exc}", file=sys.stderr)
    if engine_line:
        print(f"conformance: lab containers on {engine_line}", file=sys.stderr)
    report_dir = writable_dir(args.report_dir, "--report-dir")

    def repro(clause: str, target: str) -> str:
        """The command line that reruns just ``clause`` on just ``target``."""
        line = ["jobkit", "conformance", "--target", target, "--clause", clause]
        for flag, value in (("--wrapper", args.wrapper), ("--schema", args.schema), ("--base-dir", args.base_dir),
                            ("--key", args.key if target in real else None),
                            ("--known-hosts", args.known_hosts if target in real else None)):
            if value:
                line += [flag, value]
        return shlex.join(line)

    targets: list[TargetSpec] = []
    broken: list[Result] = []  # targets that could not be started: every clause an error there
    with Lab() as lab:
        keeper = KeepFailed(lab) if args.keep_failed else None
        for name in names:
            if name in real:
                targets.append(TargetSpec(name, SSHTransport(real[name]), None, name))
                continue
            try:
                if name != "local" and not image_label(manifest[name].image, HASH_LABEL):
                    print(f"conformance: building {name} first (offline, cached afterwards)", file=sys.stderr)
                    build(name)
                host = (keeper.start(name) if keeper and name != "local"
                        else lab.start(name, fresh=name != "local"))
            except (JobkitError, OSError) as exc:
                why = exc.message if isinstance(exc, JobkitError) else str(exc)
                print(f"conformance: target {name} could not be started: {why}", file=sys.stderr)
                broken += [Result(c.id, c.title, c.must, name, ERROR, 0.0, f"the target could not be started: {why}",
                                  repro=repro(c.id, name)) for c in chosen]
                continue
            targets.append(TargetSpec(name, SSHTransport(host.spec), host, LABELS.get(name, name)))
        labels = {**{n: n for n in names}, **{t.name: t.label or t.name for t in targets}}
        started = time.monotonic()
        runs = [asyncio.run(_run(args, targets, wrapper, schema, [c.id for c in chosen], repro,
                                 f"run {i + 1}/{args.repeat}: " if args.repeat > 1 else ""))
                for i in range(args.repeat)] if targets else [[]]
        seconds = time.monotonic() - started
        results = broken + (gate.merge_repeats(runs) if len(runs) > 1 else runs[0])
        waived = gate.apply_waivers(results, waivers)
        results = waived.results
        if keeper:  # decided while the lab is open: the others go with it
            keeper.decide(failed_targets(results))
    code = gate.exit_code(results, waived.expired)
    meta: dict[str, Any] = {"wrapper": str(wrapper), "schema": str(schema), "base_dir": args.base_dir or DEFAULT_BASE,
                            "targets": [labels[n] for n in names], "seconds": round(seconds, 1),
                            "repeat": args.repeat, "exit_code": code, "engine": engine_line,
                            "waivers": {"file": args.waivers,
                                        "expired": [w.describe() for w in waived.expired],
                                        "unused": [w.describe() for w in waived.unused]}}
    github = args.format == "github" or (args.format == "auto" and os.environ.get("GITHUB_ACTIONS") == "true")
    print(terminal(results, labels))
    for w in waived.unused:
        print(f"conformance: waiver matched no failure: {w.describe()}")
    for w in waived.expired:
        print(f"conformance: waiver EXPIRED (fails the run until renewed or removed): {w.describe()}")
    if github:
        print(github_annotations(results, labels))
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            try:
                with open(summary, "a") as f:
                    f.write(github_summary(results, labels, meta))
            except OSError as exc:
                print(f"conformance: could not append to $GITHUB_STEP_SUMMARY ({summary}): {exc}", file=sys.stderr)
    try:
        paths = write_all(results, report_dir, meta, labels)
    except OSError as exc:
        raise JobkitError(f"the run is over but its reports could not be written to {report_dir}: {exc}") from exc
    print(f"\n{len(results)} clause results on {len(names)} target(s) in {seconds:.0f}s; reports: "
          + ", ".join(str(p) for p in paths))
    if keeper:
        print(keeper.summary(failed_targets(results)))
    if code == gate.EXIT_FAIL:
        print("jobkit conformance: a MUST clause failed (or a clause was flaky, or a waiver expired): exit 1",
              file=sys.stderr)
    elif code == gate.EXIT_INFRA:
        print("jobkit conformance: no clause failed, but some results are errors (a target could not be started "
              "or reached, or the suite broke): exit 3", file=sys.stderr)
    return code


def list_text(clauses: list[Any]) -> str:
    width = max(len(c.id) for c in clauses)
    lines = []
    for c in clauses:
        lines.append(f"{c.id.ljust(width)}  {'MUST' if c.must else 'SHOULD':6}  {c.title}")
        lines.append(f"{''.ljust(width)}  {'':6}  needs: {needs(c.id)}")
    return "\n".join(lines)


def main_diff(old_path: str, new_path: str) -> int:
    d = gate.diff(gate.load_report(old_path), gate.load_report(new_path))
    print(gate.diff_text(d))
    if d.new_failures:
        print(f"jobkit conformance diff: {len(d.new_failures)} new failure(s) since {old_path}", file=sys.stderr)
        return gate.EXIT_FAIL
    return gate.EXIT_OK


def _main_slurm(args: argparse.Namespace, names: list[str]) -> int:
    """The S- clauses (jobkit.conformance.slurm) on SLURM lab clusters, with jobkit's SLURM
    backend, or ``--broken NAME`` (one of the teeth test's broken backends)."""
    from jobkit.conformance.slurm import BROKEN, S_CLAUSES, SlurmTarget, run_slurm_target
    from jobkit.lab import Lab, docker_available
    from jobkit.lab.build import HASH_LABEL, build, image_label
    from jobkit.lab.targets import get_target

    unknown = [c for c in (args.clause or []) if c not in {c.id for c in S_CLAUSES}]
    if unknown:
        raise ConfigError(f"unknown S- clause(s) {', '.join(unknown)}; known: {', '.join(c.id for c in S_CLAUSES)}")
    if args.broken is not None and args.broken not in BROKEN:
        raise ConfigError(f"--broken {args.broken!r}: known: {', '.join(BROKEN)}")
    if not docker_available():
        raise ConfigError(f"target(s) {', '.join(names)} need a Docker engine, and none answers")
    report_dir = writable_dir(args.report_dir, "--report-dir")
    backend = BROKEN[args.broken][0]() if args.broken else None
    results: list[Result] = []
    started = time.monotonic()
    with Lab() as lab:
        for name in names:
            if not image_label(get_target(name).image, HASH_LABEL):
                build(name)
            host = lab.start(name)
            target = SlurmTarget(name, host.spec, host.extra["cluster"])

            def progress(r: Result) -> None:
                print(f"{r.target}: {r.clause} {'ok' if r.outcome == PASS else r.outcome} ({r.seconds:.1f}s)"
                      + (f": {r.message}" if r.outcome != PASS else ""), flush=True)

            results += asyncio.run(run_slurm_target(target, args.clause, backend, progress))
    seconds = time.monotonic() - started
    labels = {n: n for n in names}
    print(terminal(results, labels))
    code = gate.exit_code(results, [])
    meta: dict[str, Any] = {"backend": args.broken or "slurm", "wrapper": "jobkit's (run by the SLURM backend)",
                            "schema": "", "base_dir": "", "targets": names, "seconds": round(seconds, 1),
                            "repeat": 1, "exit_code": code}
    try:
        paths = write_all(results, report_dir, meta, labels)
    except OSError as exc:
        raise JobkitError(f"the run is over but its reports could not be written to {report_dir}: {exc}") from exc
    print(f"\n{len(results)} clause results on {len(names)} cluster(s) in {seconds:.0f}s; reports: "
          + ", ".join(str(p) for p in paths))
    if code == gate.EXIT_FAIL:
        print("jobkit conformance: a MUST clause failed: exit 1", file=sys.stderr)
    elif code == gate.EXIT_INFRA:
        print("jobkit conformance: no clause failed, but some results are errors: exit 3", file=sys.stderr)
    return code


async def _run(args: argparse.Namespace, targets: list[TargetSpec], wrapper: Path, schema: Path,
               clause_ids: list[str], repro: Any, prefix: str = "") -> list[Result]:
    live = LiveProgress([t.name for t in targets], len(clause_ids), prefix) if sys.stdout.isatty() else None
    total = len(targets) * len(clause_ids)
    done = 0

    def progress(target: str, clause: str, result: Result | None) -> None:
        nonlocal done
        if live is not None:
            live.update(target, clause, result)
            return
        if result is None:
            return
        done += 1
        mark = "ok" if result.outcome == PASS else result.outcome
        print(f"{prefix}[{done}/{total}] {target}: {clause} {mark} ({result.seconds:.1f}s)", flush=True)

    try:
        if live is not None:
            live.start()
        return await run_all(targets, wrapper=wrapper, schema=schema, base_dir=args.base_dir,
                             clause_ids=clause_ids, progress=progress,
                             parallel=args.parallel or min(8, max(1, len(targets))),
                             clause_timeout=args.clause_timeout, repro=repro)
    finally:
        if live is not None:
            live.stop()
        for t in targets:
            await t.transport.close()


class LiveProgress:
    """In a terminal: one bar per target (clauses done of total, the clause running, failures so
    far), each failure printed above the bars as it happens."""

    def __init__(self, targets: list[str], clauses: int, prefix: str = "", console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console or Console()
        self.bars = Progress(TextColumn("{task.fields[target]}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[failures]} failed"), TextColumn("{task.fields[now]}"),
                             TimeElapsedColumn(), console=self.console, transient=False)
        self.prefix = prefix
        self.failures = dict.fromkeys(targets, 0)
        self.tasks = {t: self.bars.add_task(t, total=clauses, target=f"{prefix}{t}", failures=0, now="")
                      for t in targets}

    def start(self) -> None:
        self.bars.start()

    def stop(self) -> None:
        self.bars.stop()

    def update(self, target: str, clause: str, result: Result | None) -> None:
        task = self.tasks[target]
        if result is None:
            self.bars.update(task, now=clause)
            return
        if result.outcome not in (PASS, "n/a"):
            self.failures[target] += 1
            self.bars.console.print(f"{self.prefix}{target}: {clause} {result.outcome}: {result.message[:200]}",
                                    markup=False, highlight=False)
        self.bars.update(task, advance=1, failures=self.failures[target], now="")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("conformance", help="check a wrapper clause by clause (conformance/SPEC.md) on targets")
    p.add_argument("--target", action="append", metavar="T",
                   help="local, a lab target (debian-bookworm, busybox, ...) or ssh://user@host:port; repeatable "
                        "or comma-separated (default: local and every offline lab target when Docker answers)")
    p.add_argument("--wrapper", help="the wrapper to check (default: jobkit's own)")
    p.add_argument("--base-dir", help=f"where that wrapper keeps server.db and jobs/ (default {DEFAULT_BASE}; "
                                      "the suite writes cf-* jobs there)")
    p.add_argument("--schema", help="server database schema the wrapper expects (default: jobkit's)")
    p.add_argument("command", nargs="*", metavar="diff OLD.json NEW.json",
                   help="compare two JSON reports: new failures, fixed, still failing, newly n/a, waived; "
                        "exit 1 on any new failure")
    p.add_argument("--clause", action="append", metavar="ID",
                   help="only these clauses: ids or globs (repeatable), e.g. W-3 or 'W-1*'")
    p.add_argument("--skip-clause", action="append", metavar="ID", help="not these clauses: ids or globs (repeatable)")
    p.add_argument("--list", action="store_true", help="print the clauses (id, level, title, what each needs of a "
                                                       "target) and exit")
    p.add_argument("--rerun-failed", metavar="REPORT.json",
                   help="rerun only the clauses that failed, errored or were flaky in an earlier JSON report, on the "
                        "targets where they did (unless --target is given)")
    p.add_argument("--waivers", metavar="FILE", help="accepted failures (TOML or YAML: clause and target globs, a "
                                                     "reason, an optional expiry date); see conformance/SPEC.md")
    p.add_argument("--repeat", type=positive_int, default=1, metavar="N",
                   help="run every clause N times; a clause whose outcome varied is reported flaky (a failure)")
    p.add_argument("--clause-timeout", type=positive_seconds, default=CLAUSE_TIMEOUT, metavar="S",
                   help=f"a clause running longer is stopped, its processes on the target killed, and reported "
                        f"error (default {CLAUSE_TIMEOUT:g})")
    p.add_argument("--format", choices=("auto", "plain", "github"), default="auto",
                   help="github: ::error annotations and a Markdown matrix in $GITHUB_STEP_SUMMARY (auto: when "
                        "GITHUB_ACTIONS=true)")
    p.add_argument("--key", help="private key for ssh:// targets")
    p.add_argument("--known-hosts", help="known_hosts file with the ssh:// target's host key")
    p.add_argument("--report-dir", default="reports/conformance", help="where the reports go")
    p.add_argument("--parallel", type=positive_int, default=None,
                   help="targets checked at once (default: every target at once, at most 8: a clause mostly waits "
                        "on its host, so the targets' clauses overlap; with --mutate, 2 variants at once)")
    p.add_argument("--keep-failed", action="store_true",
                   help="lab targets where a clause failed stay up after the run; the report says how to log in "
                        "and how to remove them (jobkit lab down ID)")
    from jobkit.conformance.mutate import register_arguments as mutate_arguments
    mutate_arguments(p)
    p.add_argument("--broken", help="SLURM targets: run the S- clauses against one of the broken backends of the "
                                    "teeth test (absent-is-completed, timeout-is-completed): its clause must fail")
    p.set_defaults(handler=main_conformance)
