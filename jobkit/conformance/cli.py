"""``jobkit conformance``: check a wrapper, clause by clause, on lab targets and real hosts."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jobkit import wrapper_dir
from jobkit.conformance.clauses import CLAUSES
from jobkit.conformance.report import failed_must, terminal, write_all
from jobkit.conformance.runner import DEFAULT_BASE, PASS, Result, TargetSpec, run_all
from jobkit.errors import ConfigError
from jobkit.hosts import HostSpec

LABELS = {"busybox": "busybox (BusyBox userland, Alpine role)"}


def default_targets() -> list[str]:
    from jobkit.lab import docker_available, offline_targets

    return ["local", *offline_targets()] if docker_available() else ["local"]


def _ssh_target(url: str, key: str | None, known_hosts: str | None) -> HostSpec:
    u = urlparse(url)
    if not u.hostname or not u.username:
        raise ConfigError(f"real hosts look like ssh://user@host[:port], not {url!r}")
    if not key or not known_hosts:
        raise ConfigError("a real host needs --key and --known-hosts (its host key is pinned, never trusted blindly)")
    lines = [ln.split(None, 1)[1] for ln in Path(known_hosts).read_text().splitlines()
             if len(ln.split()) >= 3 and not ln.startswith("#")]
    if not lines:
        raise ConfigError(f"no host key in {known_hosts}")
    return HostSpec(url, u.hostname, u.port or 22, u.username, Path(key).expanduser(), lines[0].strip())


def main_conformance(args: argparse.Namespace) -> int:
    from jobkit.lab import Lab
    from jobkit.lab.build import HASH_LABEL, build, image_label
    from jobkit.lab.targets import load_manifest
    from jobkit.transport_ssh import SSHTransport

    names = [t for raw in (args.target or []) for t in raw.split(",") if t] or default_targets()
    wrapper = Path(args.wrapper or wrapper_dir() / "job_wrapper.sh")
    schema = Path(args.schema or wrapper_dir() / "server_schema.sql")
    for p in (wrapper, schema):
        if not p.is_file():
            raise ConfigError(f"{p} does not exist")
    unknown = [c for c in (args.clause or []) if c not in {c.id for c in CLAUSES}]
    if unknown:
        raise ConfigError(f"unknown clause(s) {', '.join(unknown)}")
    manifest = load_manifest()
    lab = Lab()
    targets: list[TargetSpec] = []
    try:
        for name in names:
            if name.startswith("ssh://"):
                spec = _ssh_target(name, args.key, args.known_hosts)
                targets.append(TargetSpec(name, SSHTransport(spec), None, name))
                continue
            if name != "local":
                if name not in manifest:
                    raise ConfigError(f"unknown target {name!r}; lab targets: local, {', '.join(manifest)}")
                if not image_label(manifest[name].image, HASH_LABEL):
                    print(f"conformance: building {name} first (offline, cached afterwards)", file=sys.stderr)
                    build(name)
            host = lab.start(name, fresh=name != "local")
            targets.append(TargetSpec(name, SSHTransport(host.spec), host, LABELS.get(name, name)))
        labels = {t.name: t.label or t.name for t in targets}
        started = time.monotonic()
        results = asyncio.run(_run(args, targets, wrapper, schema))
        seconds = time.monotonic() - started
    finally:
        lab.close()
    meta: dict[str, Any] = {"wrapper": str(wrapper), "schema": str(schema), "base_dir": args.base_dir or DEFAULT_BASE,
                            "targets": [labels[t.name] for t in targets], "seconds": round(seconds, 1)}
    print(terminal(results, labels))
    paths = write_all(results, Path(args.report_dir), meta, labels)
    print(f"\n{len(results)} clause results on {len(targets)} target(s) in {seconds:.0f}s; reports: "
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
    p.add_argument("--parallel", type=int, default=2, help="targets checked at once (default 2)")
    p.set_defaults(handler=main_conformance)
