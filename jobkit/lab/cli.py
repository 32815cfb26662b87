"""``jobkit lab``: build the offline images, bring targets up and down, list them.

``lab up TARGET`` keeps the container it starts (label ``jobkit.lab.keep=1``, a key of its own
under the cache dir) and prints its id; ``lab down`` removes kept containers (all, a target's, or
the ones named by id) and containers whose owning session is gone, never a container a running
lab session is using.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
from typing import Any

from jobkit.errors import ConfigError, JobkitError
from jobkit.lab.build import HASH_LABEL, build, image_label
from jobkit.lab.session import kept_root, reap_kept_dirs, remove_workdir
from jobkit.lab.targets import load_manifest, offline_targets

LABEL = "jobkit.lab"


def cmd_build(args: argparse.Namespace) -> int:
    names = args.targets or offline_targets(clusters=True)
    for n in names:
        r = build(n, force=args.force)
        print(f"{r.target:<16} {r.image:<28} {'built' if r.built else 'cached'} in {r.seconds:.1f}s")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jobkit.lab.carry import MANIFEST, save

    directory = Path(args.dir).expanduser()
    entries = save(directory, args.targets or None)
    for e in entries:
        print(f"{e.kind:<7} {e.image:<28} {e.file}")
    print(f"{len(entries)} image(s) and {MANIFEST} in {directory}; on the other machine: jobkit lab load {directory}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jobkit.lab.carry import load

    directory = Path(args.dir).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory")
    for e, what in load(directory):
        print(f"{e.kind:<7} {e.image:<28} {what}")
    print("jobkit lab build now finds these images up to date")
    return 0


def _wait_for_a_stop_signal() -> None:
    """Block until SIGINT/SIGTERM/SIGHUP (turned into KeyboardInterrupt by :mod:`jobkit.cli`),
    whichever thread the kernel hands the signal to: Python's handler wakes this fd."""
    r, w = socket.socketpair()
    w.setblocking(False)
    previous = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    try:
        while True:
            r.recv(64)
    finally:
        signal.set_wakeup_fd(previous)
        r.close()
        w.close()


def cmd_up(args: argparse.Namespace) -> int:
    from jobkit.lab import Lab

    if args.target == "local" and args.keep:
        raise ConfigError("the local target runs inside the `jobkit lab up local` process: it cannot be kept")
    with Lab() as lab:
        if args.target == "local":
            host = lab.start("local")
            print(host.ssh_command(), flush=True)
            print("local target running in this process; Ctrl-C (or SIGTERM) stops it and removes its files",
                  file=sys.stderr, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                _wait_for_a_stop_signal()
            return 0
        host = lab.start(args.target, keep=True)
    short = (host.container_id or "")[:12]
    record = {"target": args.target, "container": host.container_id, "port": host.spec.port,
              "key": str(host.spec.private_key), "host_key": host.spec.known_host_key,
              "ssh": host.ssh_command()}
    (host.spec.private_key.parent / "container.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record) if args.json else host.ssh_command())
    print(f"container {short} ({args.target}) ready in {host.ready_seconds:.2f}s; "
          f"stop it with: jobkit lab down {short}", file=sys.stderr)
    return 0


def _docker() -> Any:
    from jobkit.lab import docker_client

    try:
        return docker_client()
    except Exception as exc:
        raise JobkitError(f"no Docker engine answers: {exc}") from exc


def _lab_containers(client: Any) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL}=1"}))


def _owner_gone(labels: dict[str, str]) -> bool:
    from jobkit.lab import owner_of

    return not owner_of(labels).alive()


def cmd_down(args: argparse.Namespace) -> int:
    client = _docker()
    try:
        return _down(client, args)
    finally:
        client.close()


def _down(client: Any, args: argparse.Namespace) -> int:
    containers = _lab_containers(client)
    known = set(load_manifest())
    chosen: dict[str, Any] = {}  # id -> container
    refused: list[str] = []
    by_target = [a for a in args.targets if a in known]
    for arg in args.targets:
        if arg == "local":
            raise ConfigError("the local target has no container: it stops with the `jobkit lab up local` "
                              "process (Ctrl-C)")
        if arg in known:
            continue
        matches = [c for c in containers if c.id.startswith(arg) or c.name == arg] if len(arg) >= 4 else []
        if not matches:
            raise ConfigError(f"no lab target or lab container {arg!r} (targets: {', '.join(sorted(known))}; "
                              "ids: jobkit lab ls)")
        if len(matches) > 1:
            raise ConfigError(f"{arg!r} names {len(matches)} lab containers: give more of the id")
        c = matches[0]
        labels = c.labels or {}
        if labels.get(f"{LABEL}.keep") != "1" and not _owner_gone(labels):
            refused.append(f"{c.short_id} ({labels.get(f'{LABEL}.target', '?')}, pid {labels.get(f'{LABEL}.pid')})")
        chosen[c.id] = c
    if refused:
        raise ConfigError(f"not removed: {', '.join(refused)} in use by a running lab session "
                          "(it goes when that session ends)")
    for c in list(chosen.values()):  # a cluster goes as a whole
        tag = (c.labels or {}).get(f"{LABEL}.cluster")
        if tag:
            chosen.update({o.id: o for o in containers if (o.labels or {}).get(f"{LABEL}.cluster") == tag})
    skipped = 0
    if by_target or not args.targets:
        for c in containers:
            labels = c.labels or {}
            if by_target and labels.get(f"{LABEL}.target") not in by_target:
                continue
            if labels.get(f"{LABEL}.keep") == "1" or _owner_gone(labels):
                chosen[c.id] = c
            elif c.id not in chosen:
                skipped += 1
    removed = 0
    for c in chosen.values():
        labels = c.labels or {}
        try:
            c.remove(force=True)
        except Exception as exc:
            if "No such container" not in str(exc):  # already gone: fine
                raise JobkitError(f"could not remove lab container {c.short_id}: {exc}") from exc
        removed += 1
        keydir = labels.get(f"{LABEL}.keydir", "")
        if keydir and "/" not in keydir and keydir not in (".", ".."):
            remove_workdir(kept_root() / keydir)
        print(f"removed {c.short_id} ({labels.get(f'{LABEL}.target', '?')}, "
              f"{'kept by lab up' if labels.get(f'{LABEL}.keep') == '1' else 'its session is gone'})")
    from jobkit.lab.slurm import reap_unused

    gone = {(c.labels or {}).get(f"{LABEL}.cluster") for c in chosen.values()} - {None}
    reap_unused(client, LABEL, lambda labels: labels.get(f"{LABEL}.cluster") in gone
                or (labels.get(f"{LABEL}.keep") != "1" and _owner_gone(labels)))
    reap_kept_dirs({(c.labels or {}).get(f"{LABEL}.keydir", "") for c in _lab_containers(client)})
    note = f"; left {skipped} container(s) of running lab sessions alone" if skipped else ""
    print(f"removed {removed} lab container(s){note}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    client: Any = None
    with contextlib.suppress(JobkitError):
        client = _docker()
    try:
        return _ls(client)
    finally:
        if client is not None:
            client.close()


def _ls(client: Any) -> int:
    rows = []
    for name, t in load_manifest().items():
        digest = image_label(t.image, HASH_LABEL) if t.offline and client is not None else None
        if client is None:
            state = "no docker" if t.offline else "needs a registry"
        else:
            state = "built" if digest else ("not built" if t.offline else "needs a registry")
        rows.append((name, t.image, state, t.description))
    print(f"{'TARGET':<16} {'IMAGE':<28} {'IMAGE STATE':<17} DESCRIPTION")
    print(f"{'local':<16} {'(in-process asyncssh)':<28} {'always':<17} this machine's /bin/sh over real SSH")
    for r in rows:
        print(f"{r[0]:<16} {r[1]:<28} {r[2]:<17} {r[3]}")
    if client is None:
        print("\nno Docker engine answers: only the local target is available", file=sys.stderr)
        return 0
    from jobkit.lab import engine

    with contextlib.suppress(Exception):  # the list above is the answer; the engine line only adds to it
        print(f"\nengine: {engine().describe()}")
    containers = _lab_containers(client)
    if containers:
        print(f"\n{'RUNNING':<16} {'ID':<12} {'STATUS':<9} {'ADDRESS':<16} OWNER")
        for c in containers:
            labels = c.labels or {}
            ports = (c.ports or {}).get("22/tcp") or [{}]
            owner = ("kept (lab up)" if labels.get(f"{LABEL}.keep") == "1"
                     else "session gone (lab down removes it)" if _owner_gone(labels)
                     else f"session, pid {labels.get(f'{LABEL}.pid', '?')}")
            print(f"{labels.get(f'{LABEL}.target', '?'):<16} {c.short_id:<12} {c.status:<9} "
                  f"{'127.0.0.1:' + str(ports[0].get('HostPort', '?')):<16} {owner}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = sub.add_parser("lab", help="lab targets: build, up, down, ls")
    lsub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)
    p = lsub.add_parser("build", help="build offline images (all offline targets by default)")
    p.add_argument("targets", nargs="*", metavar="TARGET")
    p.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    p.set_defaults(handler=cmd_build)
    p = lsub.add_parser("up", help="start a target, keep it, print an ssh command line for it (and its id)")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--json", action="store_true", help="print the container's record (id, port, key, ssh) as JSON")
    p.add_argument("--keep", action="store_true", help="keep it after this command returns, until `jobkit lab down` "
                                                      "(what `lab up` always does for a container target)")
    p.set_defaults(handler=cmd_up)
    p = lsub.add_parser("down", help="remove containers `lab up` kept and those of sessions that are gone "
                                     "(all, a target's, or by id); never a running session's")
    p.add_argument("targets", nargs="*", metavar="TARGET|ID")
    p.set_defaults(handler=cmd_down)
    p = lsub.add_parser("save", help="save the built images (and their bases) as tarballs named by their input "
                                     "hashes, with a manifest, to carry to a machine with no network")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("targets", nargs="*", metavar="TARGET", help="default: every offline target")
    p.set_defaults(handler=cmd_save)
    p = lsub.add_parser("load", help="load what `lab save` wrote, after checking every tarball's hash; "
                                     "`lab build` is then a cache hit")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(handler=cmd_load)
    p = lsub.add_parser("ls", help="list targets, image state and lab containers")
    p.set_defaults(handler=cmd_ls)
