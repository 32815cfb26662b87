"""``jobkit conformance``: check a wrapper, clause by clause, on lab targets and real hosts."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from jobkit import wrapper_dir
from jobkit.conformance.clauses import CLAUSES
from jobkit.conformance.report import failed_must, terminal, write_all
from jobkit.conformance.runner import DEFAULT_BASE, PASS, Result, TargetSpec, run_all
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
    from jobkit.lab import Lab, docker_available
    from jobkit.lab.build import HASH_LABEL, build, image_label
    from jobkit.lab.targets import load_manifest
    from jobkit.transport_ssh import SSHTransport

    # Everything the user gave is checked before anything starts (a lab, a build, a run).
    names = list(dict.fromkeys(t.strip() for raw in (args.target or []) for t in raw.split(",") if t.strip()))
    names = names or default_targets()
    from jobkit.lab.slurm import is_slurm_target

    if any(is_slurm_target(n) for n in names):
        if not all(is_slurm_target(n) for n in names):
            raise ConfigError("SLURM targets (slurm, slurm-noacct) run the S- clauses: give them without others")
        return _main_slurm(args, names)
    wrapper = text_file(args.wrapper or str(wrapper_dir() / "job_wrapper.sh"), "wrapper")
    schema = text_file(args.schema or str(wrapper_dir() / "server_schema.sql"), "schema")
    unknown = [c for c in (args.clause or []) if c not in {c.id for c in CLAUSES}]
    if unknown:
        raise ConfigError(f"unknown clause(s) {', '.join(unknown)}")
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
    report_dir = writable_dir(args.report_dir, "--report-dir")

    targets: list[TargetSpec] = []
    with Lab() as lab:
        for name in names:
            if name in real:
                targets.append(TargetSpec(name, SSHTransport(real[name]), None, name))
                continue
            if name != "local" and not image_label(manifest[name].image, HASH_LABEL):
                print(f"conformance: building {name} first (offline, cached afterwards)", file=sys.stderr)
                build(name)
            host = lab.start(name, fresh=name != "local")
            targets.append(TargetSpec(name, SSHTransport(host.spec), host, LABELS.get(name, name)))
        labels = {t.name: t.label or t.name for t in targets}
        started = time.monotonic()
        results = asyncio.run(_run(args, targets, wrapper, schema))
        seconds = time.monotonic() - started
    meta: dict[str, Any] = {"wrapper": str(wrapper), "schema": str(schema), "base_dir": args.base_dir or DEFAULT_BASE,
                            "targets": [labels[t.name] for t in targets], "seconds": round(seconds, 1)}
    print(terminal(results, labels))
    try:
        paths = write_all(results, report_dir, meta, labels)
    except OSError as exc:
        raise JobkitError(f"the run is over but its reports could not be written to {report_dir}: {exc}") from exc
    print(f"\n{len(results)} clause results on {len(targets)} target(s) in {seconds:.0f}s; reports: "
          + ", ".join(str(p) for p in paths))
    bad = failed_must(results)
    if bad:
        print(f"jobkit conformance: {len(bad)} MUST clause result(s) failed", file=sys.stderr)
        return 1
    return 0


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
    meta: dict[str, Any] = {"backend": args.broken or "slurm", "targets": names, "seconds": round(seconds, 1)}
    try:
        paths = write_all(results, report_dir, meta, labels)
    except OSError as exc:
        raise JobkitError(f"the run is over but its reports could not be written to {report_dir}: {exc}") from exc
    print(f"\n{len(results)} clause results on {len(names)} cluster(s) in {seconds:.0f}s; reports: "
          + ", ".join(str(p) for p in paths))
    bad = failed_must(results)
    if bad:
        print(f"jobkit conformance: {len(bad)} MUST clause result(s) failed", file=sys.stderr)
        return 1
    return 0


async def _run(args: argparse.Namespace, targets: list[TargetSpec], wrapper: Path, schema: Path) -> list[Result]:
    interactive = sys.stdout.isatty()
    total = len(targets) * len([c for c in CLAUSES if not args.clause or c.id in args.clause])
    done = 0

    def progress(target: str, clause: str, result: Result | None) -> None:
        nonlocal done
        if result is None:
            if interactive:
                print(f"\r[{done}/{total}] {target}: {clause} ...".ljust(70), end="", flush=True)
            return
        done += 1
        mark = "ok" if result.outcome == PASS else result.outcome
        line = f"[{done}/{total}] {target}: {clause} {mark} ({result.seconds:.1f}s)"
        if interactive:
            print("\r" + line.ljust(70), end="\n" if result.outcome != PASS else "", flush=True)
        else:
            print(line, flush=True)

    try:
        return await run_all(targets, wrapper=wrapper, schema=schema, base_dir=args.base_dir,
                             clause_ids=args.clause, progress=progress, parallel=args.parallel)
    finally:
        if interactive:
            print()
        for t in targets:
            await t.transport.close()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("conformance", help="check a wrapper clause by clause (conformance/SPEC.md) on targets")
    p.add_argument("--target", action="append", metavar="T",
                   help="local, a lab target (debian-bookworm, busybox, ...) or ssh://user@host:port; repeatable "
                        "or comma-separated (default: local and every offline lab target when Docker answers)")
    p.add_argument("--wrapper", help="the wrapper to check (default: jobkit's own)")
    p.add_argument("--base-dir", help=f"where that wrapper keeps server.db and jobs/ (default {DEFAULT_BASE}; "
                                      "the suite writes cf-* jobs there)")
    p.add_argument("--schema", help="server database schema the wrapper expects (default: jobkit's)")
    p.add_argument("--clause", action="append", help="only these clauses (repeatable), e.g. W-3")
    p.add_argument("--key", help="private key for ssh:// targets")
    p.add_argument("--known-hosts", help="known_hosts file with the ssh:// target's host key")
    p.add_argument("--report-dir", default="reports/conformance", help="where the reports go")
    p.add_argument("--parallel", type=positive_int, default=2, help="targets checked at once (default 2)")
    p.add_argument("--broken", help="SLURM targets: run the S- clauses against one of the broken backends of the "
                                    "teeth test (absent-is-completed, timeout-is-completed): its clause must fail")
    p.set_defaults(handler=main_conformance)
