"""``jobkit lab``: build the offline images, bring targets up and down, list them."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from jobkit.lab.build import HASH_LABEL, build, cache_dir, image_label
from jobkit.lab.targets import load_manifest, offline_targets


def _state_dir() -> Path:
    d = cache_dir() / "lab-up"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cmd_build(args: argparse.Namespace) -> int:
    names = args.targets or offline_targets()
    for n in names:
        r = build(n, force=args.force)
        print(f"{r.target:<16} {r.image:<28} {'built' if r.built else 'cached'} in {r.seconds:.1f}s")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from jobkit.lab import Lab

    lab = Lab(workdir=_state_dir() / f"{args.target}-{int(time.time())}")
    if args.target == "local":
        host = lab.start("local")
        print(host.ssh_command())
        print("local target running in this process; Ctrl-C stops it", file=sys.stderr)
        try:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            lab.close()
        return 0
    host = lab.start(args.target, keep=True)
    record = {"target": args.target, "container": host.container_id, "port": host.spec.port,
              "key": str(host.spec.private_key), "host_key": host.spec.known_host_key,
              "ssh": host.ssh_command()}
    (_state_dir() / f"{args.target}.json").write_text(json.dumps(record, indent=2))
    print(host.ssh_command())
    print(f"ready in {host.ready_seconds:.2f}s; stop with: jobkit lab down {args.target}", file=sys.stderr)
    return 0


def _lab_containers() -> list[object]:
    import docker

    return list(docker.from_env(timeout=10).containers.list(all=True, filters={"label": "jobkit.lab=1"}))


def cmd_down(args: argparse.Namespace) -> int:
    removed = 0
    for c in _lab_containers():
        labels = getattr(c, "labels", {}) or {}
        if args.targets and labels.get("jobkit.lab.target") not in args.targets:
            continue
        c.remove(force=True)  # type: ignore[attr-defined]
        (_state_dir() / f"{labels.get('jobkit.lab.target')}.json").unlink(missing_ok=True)
        removed += 1
    print(f"removed {removed} lab container(s)")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    rows = []
    for name, t in load_manifest().items():
        digest = image_label(t.image, HASH_LABEL) if t.offline else None
        state = "built" if digest else ("not built" if t.offline else "needs a registry")
        rows.append((name, t.image, state, t.description))
    print(f"{'TARGET':<16} {'IMAGE':<28} {'IMAGE STATE':<17} DESCRIPTION")
    print(f"{'local':<16} {'(in-process asyncssh)':<28} {'always':<17} this machine's /bin/sh over real SSH")
    for r in rows:
        print(f"{r[0]:<16} {r[1]:<28} {r[2]:<17} {r[3]}")
    containers = _lab_containers()
    if containers:
        print("\nRUNNING")
        for c in containers:
            labels = getattr(c, "labels", {}) or {}
            ports = (getattr(c, "ports", {}) or {}).get("22/tcp") or [{}]
            print(f"{labels.get('jobkit.lab.target', '?'):<16} {getattr(c, 'short_id', '?'):<12} "
                  f"{getattr(c, 'status', '?'):<9} 127.0.0.1:{ports[0].get('HostPort', '?'):<6} "
                  f"{'kept (lab up)' if labels.get('jobkit.lab.keep') == '1' else 'session'}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = sub.add_parser("lab", help="lab targets: build, up, down, ls")
    lsub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)
    p = lsub.add_parser("build", help="build offline images (all offline targets by default)")
    p.add_argument("targets", nargs="*", metavar="TARGET")
    p.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    p.set_defaults(handler=cmd_build)
    p = lsub.add_parser("up", help="start a target and print an ssh command line for it")
    p.add_argument("target", metavar="TARGET")
    p.set_defaults(handler=cmd_up)
    p = lsub.add_parser("down", help="remove lab containers (all, or of the given targets)")
    p.add_argument("targets", nargs="*", metavar="TARGET")
    p.set_defaults(handler=cmd_down)
    p = lsub.add_parser("ls", help="list targets, image state and running lab containers")
    p.set_defaults(handler=cmd_ls)

