"""``jobkit submit | status | reconcile | cancel | hosts``: the runtime from the command line.

Tables for people, ``--json`` for scripts; bad input (unknown host, bad id, unreachable host)
is a one-line error and a non-zero exit code, never a traceback. The store lives in
``$JOBKIT_HOME/store.db`` (default ``~/.local/share/jobkit``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from jobkit.backends import backend_for
from jobkit.deploy import deploy
from jobkit.errors import ConfigError, HostUnreachable, OutcomeUnknown, RemoteTimeout
from jobkit.hosts import HostSpec
from jobkit.ids import validate_id
from jobkit.reconcile import HostReport, reconcile_host
from jobkit.runner import cancel, recover, submit
from jobkit.sagas import Recovery
from jobkit.store import AsyncStore, HistoryEntry, JobRecord, Store
from jobkit.transport_ssh import SSHTransport
from jobkit.userinput import (
    host_public_key,
    positive_int,
    positive_seconds,
    ssh_url_parts,
)


def store_path() -> Path:
    home = Path(os.environ.get("JOBKIT_HOME") or Path.home() / ".local" / "share" / "jobkit").expanduser()
    where = "JOBKIT_HOME=" if os.environ.get("JOBKIT_HOME") else "the jobkit home "
    if home.exists() and not home.is_dir():
        raise ConfigError(f"{where}{home} is not a directory")
    if (home / "store.db").is_dir():
        raise ConfigError(f"the store {home / 'store.db'} is a directory, not a database file")
    return home / "store.db"


def _store() -> AsyncStore:
    return AsyncStore(Store(store_path()))


def _recover_interrupted(store: AsyncStore) -> None:
    """Resolve what a runner killed in the middle left behind (a submit half made), before doing
    anything else; a host that cannot be reached now is tried again next time."""
    if not store.sync.sagas.sagas(unresolved=True):
        return
    transports: dict[str, SSHTransport] = {}

    def transport_for(host: str) -> SSHTransport:
        if host not in transports:
            transports[host] = SSHTransport(store.sync.host(host))
        return transports[host]

    async def go() -> Recovery:
        try:
            return await recover(store, transport_for)
        finally:
            for t in transports.values():
                await t.close()

    out = asyncio.run(go())
    if out.changed:
        print(f"jobkit: resolved {out.changed} interrupted operation(s): {len(out.completed)} completed, "
              f"{len(out.compensated)} undone, {len(out.failed)} to retry (jobkit sagas --unresolved)", file=sys.stderr)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [header, *rows])


def _job_row(j: JobRecord) -> list[str]:
    flags = ("stale " if j.stale else "") + ("conflict" if j.conflict else "")
    return [j.id, (j.name or "")[:24], j.host, j.status.value, "" if j.exit_code is None else str(j.exit_code),
            flags.strip(), (j.reason or "")[:70]]


def _job_json(j: JobRecord) -> dict[str, Any]:
    return {"id": j.id, "host": j.host, "status": j.status.value, "exit_code": j.exit_code, "signal": j.signal,
            "stale": j.stale, "conflict": j.conflict, "source": j.status_source, "reason": j.reason,
            "command": j.command, "submitted_at": j.submitted_at, "completed_at": j.completed_at,
            "name": j.name, "cwd": j.work_dir}


# --- hosts ----------------------------------------------------------------------------------
def cmd_hosts_add(args: argparse.Namespace) -> int:
    """A host as ``ssh`` reaches it: the address (or an alias of ``~/.ssh/config``), a key, and the
    host key pinned from ``known_hosts`` (or given); a pinned host key that changed is refused."""
    from jobkit.sshconfig import fingerprint, pick_host_key, pick_identity, resolve

    if not args.name.strip() or any(c.isspace() or not c.isprintable() for c in args.name):
        raise ConfigError(f"host name {args.name!r} must be non-empty, without spaces or control characters")
    user, alias, port = ssh_url_parts(args.url)
    host = resolve(alias, user=user, port=port, config=Path(args.ssh_config).expanduser() if args.ssh_config else None)
    key = pick_identity(host, args.key)
    if args.known_host_key:
        known, source = host_public_key(args.known_host_key), "--known-host-key"
    else:
        known, where = pick_host_key(host, args.known_hosts)
        source = str(where)
    store = Store(store_path())
    try:
        before: HostSpec | None = store.host(args.name)
    except ConfigError:
        before = None
    if (before is not None and before.known_host_key and before.known_host_key.split()[:2] != known.split()[:2]
            and not args.replace_host_key):
        raise ConfigError(f"the host key of {args.name} changed: the store pins {fingerprint(before.known_host_key)} "
                          f"for {before.display}, and {source} now has {fingerprint(known)} for "
                          f"{host.user}@{host.address}:{host.port}; if you expect the change (the host was "
                          "reinstalled, or is another machine now), run again with --replace-host-key")
    from jobkit.backends import SCHEDULERS

    if args.scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler {args.scheduler!r}: known schedulers: {', '.join(SCHEDULERS)}")
    if args.partition is not None:
        if args.scheduler == "tmux":
            raise ConfigError("--partition is for a batch scheduler's host (--scheduler slurm)")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.partition):
            raise ConfigError(f"--partition {args.partition!r}: a partition name (A-Z a-z 0-9 _ . -)")
    store.add_host(HostSpec(args.name, host.address, host.port, host.user, key, known, args.base_dir,
                            scheduler=args.scheduler, partition=args.partition))
    via = f" (from {host.config} for {alias})" if host.config is not None and alias != host.address else ""
    print(f"host {args.name} {'updated' if before else 'added'}: {host.user}@{host.address}:{host.port}{via}; "
          f"key {key}; host key {fingerprint(known)} from {source}")
    return 0


def cmd_hosts_ls(args: argparse.Namespace) -> int:
    hosts = Store(store_path()).hosts()
    if args.json:
        print(json.dumps([{"name": h.name, "address": h.address, "port": h.port, "user": h.user,
                           "base_dir": h.base_dir, "scheduler": h.scheduler, "partition": h.partition}
                          for h in hosts], indent=2))
    else:
        print(_table([[h.name, h.display, h.base_dir or "~/.jobkit", h.scheduler + (f" ({h.partition})"
                                                                                    if h.partition else "")]
                      for h in hosts], ["HOST", "ADDRESS", "BASE", "SCHEDULER"]))
    return 0


# --- jobs -----------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    argv = list(args.job_argv)
    if not argv:
        raise ConfigError("nothing to run: jobkit submit HOST -- COMMAND [ARGS...]")
    if args.id is not None:
        validate_id(args.id)
    env = _env_pairs(args.env or [])
    if args.name is not None and (not args.name.strip() or len(args.name) > 200 or "\n" in args.name):
        raise ConfigError("--name: a short one-line name (1-200 characters)")
    store = _store()
    spec = store.sync.host(args.host)
    # (the host's default partition is added by the library's submit)
    resources = {k: str(v) for k in ("time", "cpus", "mem", "partition") if (v := getattr(args, k)) is not None}
    if resources and spec.scheduler == "tmux":
        raise ConfigError(f"--{', --'.join(resources)}: host {spec.name} runs jobs with tmux, which has no "
                          "resources to ask for (a batch scheduler's host has: --scheduler slurm)")
    if resources:
        from jobkit.backends.slurm import resource_args

        resource_args(resources)  # bad values: one line, exit 2, before anything is recorded
    _recover_interrupted(store)

    async def go() -> str:
        t = SSHTransport(spec)
        try:
            if not args.no_deploy:
                await deploy(t, spec.base_dir)
            s = await submit(t, store, spec.name, argv, job_id=args.id, base_dir=spec.base_dir,
                             backend=backend_for(spec.scheduler), env=env, cwd=args.cwd, name=args.name,
                             resources=resources)
            return s.job_id
        finally:
            await t.close()

    try:
        job_id = asyncio.run(go())
    except OutcomeUnknown as exc:
        # the job may be running: say which one, so the caller can follow it
        print(json.dumps({"id": exc.job_id, "host": spec.name, "outcome": "unknown"}) if args.json else exc.job_id)
        print(f"jobkit: {exc.message}", file=sys.stderr)
        return 3
    print(json.dumps({"id": job_id, "host": spec.name}) if args.json else job_id)
    return 0


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_pairs(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.fullmatch(key):
            raise ConfigError(f"--env {item!r}: give NAME=VALUE, NAME of letters, digits and _")
        if key.startswith("JOBKIT_"):
            raise ConfigError(f"--env {key}: JOBKIT_* variables are the wrapper's own")
        env[key] = value
    return env


def cmd_status(args: argparse.Namespace) -> int:
    store = Store(store_path())
    jobs = [store.job(validate_id(j)) for j in args.jobs] if args.jobs else store.jobs()
    # jobs named on the command line come with their status history (what changed, when, why)
    history = {j.id: store.history_entries(j.id) for j in jobs} if args.jobs else {}
    if args.json:
        out = []
        for j in jobs:
            d = _job_json(j)
            if j.id in history:
                d["history"] = [_history_json(e) for e in history[j.id]]
            out.append(d)
        print(json.dumps(out, indent=2))
    else:
        print(_table([_job_row(j) for j in jobs], ["JOB", "NAME", "HOST", "STATUS", "EXIT", "FLAGS", "REASON"]))
        for job_id, entries in history.items():
            print(f"\nhistory of {job_id}:")
            print(_table([[_utc(e.timestamp), e.status, "" if e.exit_code is None else str(e.exit_code), e.source,
                           e.reason or ""] for e in entries], ["TIME", "STATUS", "EXIT", "SOURCE", "REASON"]))
    return 0


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _history_json(e: HistoryEntry) -> dict[str, Any]:
    return {"status": e.status, "time": _utc(e.timestamp), "timestamp": e.timestamp, "source": e.source,
            "reason": e.reason, "exit_code": e.exit_code, "version": e.version, "observed_at": e.observed_at}


def cmd_reconcile(args: argparse.Namespace) -> int:
    store = _store()
    _recover_interrupted(store)
    hosts = [store.sync.host(args.host)] if args.host else store.sync.hosts()
    since = store.sync.last_seen()
    started = time.time()

    async def go() -> list[HostReport]:
        async def one(spec: HostSpec) -> HostReport:
            t = SSHTransport(spec)
            try:
                return await reconcile_host(t, store, spec.name, base_dir=spec.base_dir, all_jobs=args.all,
                                            timeout=args.timeout, backend=backend_for(spec.scheduler))
            finally:
                await t.close()

        return list(await asyncio.gather(*(one(h) for h in hosts)))

    reports = asyncio.run(go())
    away = store.sync.away_summary(since) if since is not None else None
    store.sync.touch_last_seen(started)
    if args.json:
        print(json.dumps({"hosts": [{"host": r.host, "reachable": r.reachable, "error": r.error,
                                     "changed": r.changed, "orphans": r.orphans, "superseded": r.superseded,
                                     "fenced": r.fenced, "seconds": round(r.seconds, 3),
                                     "jobs": [v.as_dict() for v in r.verdicts]} for r in reports],
                          "while_you_were_away": away}, indent=2))
    else:
        if away and any(away.values()):
            print("while you were away: " + ", ".join(f"{len(v)} {k}" for k, v in away.items() if v))
        for r in reports:
            state = "reachable" if r.reachable else f"UNAVAILABLE ({r.error}): showing last known status"
            print(f"{r.host}: {state}; {len(r.verdicts)} job(s), {r.changed} changed, {r.seconds:.2f}s")
            if r.verdicts:
                print(_table([[v.job_id, v.status.value + (" (stale)" if v.stale else ""), v.source.value,
                               " ".join(f"{k}={s}" for k, s in v.said.items()), v.reason[:60]] for v in r.verdicts],
                             ["JOB", "STATUS", "DECIDED BY", "SOURCES", "REASON"]))
            if r.superseded:
                print(f"{r.host}: {len(r.superseded)} verdict(s) not written: another writer changed those jobs "
                      f"meanwhile (the next reconcile looks again): {' '.join(r.superseded)}")
            if r.fenced:
                print(f"{r.host}: {len(r.fenced)} job(s) never started; their ids are fenced on the host so they "
                      f"never will: {' '.join(r.fenced)}")
            if r.orphans:
                print(f"{r.host}: {len(r.orphans)} job(s) on the host unknown to this store: {' '.join(r.orphans)}")
    unreachable = [r.host for r in reports if not r.reachable]
    if unreachable:
        print(f"jobkit: error: host(s) unavailable: {', '.join(unreachable)}", file=sys.stderr)
        return 3
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    astore = _store()
    store = astore.sync
    job = store.job(validate_id(args.job))
    spec = store.host(job.host)
    _recover_interrupted(astore)

    async def go() -> str:
        t = SSHTransport(spec)
        try:
            return await cancel(t, job.id, spec.base_dir, backend=backend_for(spec.scheduler), store=astore)
        finally:
            await t.close()

    try:
        print(f"{job.id}: {asyncio.run(go())}")
    except (HostUnreachable, RemoteTimeout) as exc:
        raise HostUnreachable(f"cannot cancel {job.id}: {exc.message}", host=spec.name) from exc
    return 0


# --- logs -----------------------------------------------------------------------------------
def cmd_logs(args: argparse.Namespace) -> int:
    """The job's output from its host (jobkit.logs: bounded reads), written as it arrives."""
    import contextlib

    from jobkit.logs import Stream, read_output

    store = Store(store_path())
    try:
        job = store.job(validate_id(args.job))
        spec = store.host(job.host)
    finally:
        store.close()
    out = getattr(sys.stdout, "buffer", None)

    async def go() -> None:
        t = SSHTransport(spec)
        try:
            async for chunk in read_output(t, job.id, stream=Stream.STDERR if args.stderr else Stream.STDOUT,
                                           base_dir=spec.base_dir, tail_lines=args.tail, tail_bytes=args.bytes,
                                           follow=args.follow, timeout=args.timeout):
                if out is not None:
                    out.write(chunk)
                    out.flush()
                else:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
        finally:
            await t.close()

    try:
        asyncio.run(go())
    except (HostUnreachable, RemoteTimeout) as exc:
        raise type(exc)(f"cannot read the output of {job.id}: {exc.message}", host=spec.name) from exc
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, and keep the interpreter's exit from
        # failing to flush into the closed pipe
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_check_history(args: argparse.Namespace) -> int:
    from jobkit.history import check_history, host_records
    from jobkit.probe import JobQuery, probe

    store = Store(store_path())
    entries = store.history_entries()
    hosts = [store.host(args.host)] if args.host else store.hosts()
    jobs = store.jobs(args.host) if args.host else store.jobs()
    unchecked: list[str] = []
    records: dict[str, list[tuple[str, str, int | None]]] = {}

    async def gather() -> None:
        async def one(spec: HostSpec) -> None:
            mine = [j for j in jobs if j.host == spec.name]
            if not mine:
                return
            t = SSHTransport(spec)
            try:
                result = await probe(t, [JobQuery(j.id) for j in mine], spec.base_dir, args.timeout)
            finally:
                await t.close()
            if not result.host.reachable:
                unchecked.append(f"{spec.name} ({result.host.error})")
                return
            records.update(host_records(result.evidence, {j.id: j.token for j in mine}))

        await asyncio.gather(*(one(h) for h in hosts))

    if not args.no_hosts:
        asyncio.run(gather())
    if args.host:
        entries = [e for e in entries if e.job_id in {j.id for j in jobs}]
    violations = check_history(entries, None if args.no_hosts else records)
    if args.json:
        print(json.dumps({"entries": len(entries), "jobs": len({e.job_id for e in entries}),
                          "violations": [v.as_dict() for v in violations], "hosts_not_checked": unchecked},
                         indent=2))
    else:
        for v in violations:
            print(v.line())
        print(f"{len(entries)} history entries of {len({e.job_id for e in entries})} job(s): "
              f"{len(violations)} impossible transition(s)"
              + (f"; not compared with the host: {', '.join(unchecked)}" if unchecked else ""))
    store.close()
    if violations:
        return 1
    return 3 if unchecked else 0


def cmd_watch(args: argparse.Namespace) -> int:
    """The service as a daemon: a tick now (then the "while you were away" summary), then one
    every interval, one line per change, until SIGTERM or SIGINT (the tick in flight finished,
    connections and stores closed)."""
    import signal

    from jobkit.reconcile import Drift, ReconcileService, Tick

    store = _store()
    _recover_interrupted(store)
    since = store.sync.last_seen()
    transports: dict[str, SSHTransport] = {}
    down: set[str] = set()
    first = True

    def transport_for(name: str) -> SSHTransport:
        if name not in transports:  # one connection per host, kept (and re-made) across ticks
            transports[name] = SSHTransport(store.sync.host(name))
        return transports[name]

    def say(line: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", flush=True)

    def on_tick(tick: Tick) -> None:
        nonlocal first
        by_job: dict[str, list[Drift]] = {}
        for d in tick.drifts:
            by_job.setdefault(d.job_id, []).append(d)
        for r in tick.reports:
            if not r.reachable and r.host not in down:
                down.add(r.host)
                say(f"{r.host}: UNAVAILABLE ({r.error}): last known statuses kept, marked stale")
            elif r.reachable and r.host in down:
                down.discard(r.host)
                say(f"{r.host}: reachable again")
            for v in r.verdicts:  # one line per job that changed (its drifts: status, stale, ...)
                was, changes = r.before.get(v.job_id), by_job.get(v.job_id)
                if was is None or not changes:
                    continue
                code = "" if v.exit_code is None else f" (exit {v.exit_code})"
                shown: tuple[str, ...]
                if was.status is not v.status:
                    head, shown = f"{was.status.value} -> {v.status.value}{code}", ("status", "exit_code", "source")
                else:
                    head, shown = v.status.value, ()
                rest = "; ".join(f"{d.field}: {d.cached!r} -> {d.authoritative!r}" for d in changes
                                 if d.field not in shown)
                say(f"{v.job_id}: {head}" + (f" ({rest})" if rest else "") + f" [{v.source.value}] {v.reason}")
        for failure in tick.hosts_failed:
            say(f"reconciliation failed: {failure}")
        if first:
            first = False
            away = store.sync.away_summary(since) if since is not None else None
            if away and any(away.values()):
                say("while you were away: " + ", ".join(f"{len(v)} {k}" for k, v in away.items() if v))
        store.sync.touch_last_seen(time.time())
        if args.verbose:
            say(f"tick: {json.dumps(tick.as_dict())}")

    async def main() -> None:
        service = ReconcileService(store, transport_for, interval=args.interval, concurrency=args.concurrency,
                                   timeout=args.timeout, grace=args.grace, on_tick=on_tick)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        try:
            if args.once:
                await service.tick()
            else:
                service.start()
                await stop.wait()
                print("jobkit watch: stopping: finishing the tick in flight", file=sys.stderr, flush=True)
                await service.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await asyncio.gather(*(t.close() for t in transports.values()))

    try:
        asyncio.run(main())
    finally:
        store.sync.close()
    return 0


def cmd_sagas(args: argparse.Namespace) -> int:
    store = Store(store_path())
    sagas = store.sagas.sagas(unresolved=args.unresolved, limit=args.limit)
    if args.json:
        print(json.dumps([s.as_dict() for s in sagas], indent=2))
        return 0
    if not sagas:
        print("no unresolved sagas" if args.unresolved else "no sagas")
        return 0
    for s in sagas:
        job = s.input.get("job_id", "") if isinstance(s.input, dict) else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started_at))
        print(f"saga {s.id} {s.name} {job} {s.state.value} (started {when}"
              + (f", owner pid {s.owner.pid}" if s.owner else "") + ")" + (f": {s.failure}" if s.failure else ""))
        for st in s.steps:
            print(f"  {st.idx} {st.name:<13} {st.state.value:<12}" + (f" {st.error}" if st.error else "")
                  + (f" -> {json.dumps(st.output)}" if st.output else ""))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logging.basicConfig(level=os.environ.get("JOBKIT_LOG", "WARNING"), format="%(name)s: %(message)s")
    p = sub.add_parser("submit", help="run a command on a host: jobkit submit HOST -- CMD...")
    p.add_argument("host")
    p.add_argument("--id", help="job id (default: generated); 1-64 of A-Z a-z 0-9 _ -")
    p.add_argument("--no-deploy", action="store_true", help="do not check/install the wrapper first")
    p.add_argument("--cwd", metavar="DIR", help="the job's working directory on the host (~/ allowed; must exist)")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="set a variable for the job (repeatable)")
    p.add_argument("--name", help="a name for people, shown by jobkit status")
    p.add_argument("--time", help="batch scheduler: time limit (SLURM --time: MM, HH:MM:SS, D-HH, ...)")
    p.add_argument("--cpus", help="batch scheduler: CPUs for the job (SLURM --cpus-per-task)")
    p.add_argument("--mem", help="batch scheduler: memory (SLURM --mem: e.g. 500M, 2G)")
    p.add_argument("--partition", help="batch scheduler: partition (default: the host's)")
    p.add_argument("--json", action="store_true")
    p.add_argument("job_argv", nargs="*", metavar="COMMAND", help="the command and its arguments, after --")
    p.set_defaults(handler=cmd_submit)
    p = sub.add_parser("status", help="jobs as the local store knows them")
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)
    p = sub.add_parser("reconcile", help="ask the hosts how their jobs really are (one round trip per host)")
    p.add_argument("--host")
    p.add_argument("--all", action="store_true", help="also re-check jobs already final")
    p.add_argument("--timeout", type=positive_seconds, default=5.0, help="per-host bound in seconds (default 5)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_reconcile)
    p = sub.add_parser("cancel", help="stop a job (TERM to its wrapper, forwarded to the job's group)")
    p.add_argument("job")
    p.set_defaults(handler=cmd_cancel)
    from jobkit.userinput import count
    p = sub.add_parser("logs", help="a job's output, read from its host in bounded reads (--follow: until it ends)")
    p.add_argument("job")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep reading as the job writes, until it has ended (Ctrl-C stops)")
    p.add_argument("--stderr", action="store_true", help="the job's stderr instead of its stdout")
    last = p.add_mutually_exclusive_group()
    last.add_argument("--tail", type=count, metavar="N", help="only its last N lines")
    last.add_argument("--bytes", type=count, metavar="N", help="only its last N bytes")
    p.add_argument("--timeout", type=positive_seconds, default=10.0, help="per-read bound in seconds (default 10)")
    p.set_defaults(handler=cmd_logs)
    p = sub.add_parser("check-history", help="report every impossible transition in the store's status history "
                                             "(and final statuses the hosts' records contradict)")
    p.add_argument("--host", help="only this host's jobs")
    p.add_argument("--no-hosts", action="store_true", help="check the history alone, without asking the hosts")
    p.add_argument("--timeout", type=float, default=5.0, help="per-host bound in seconds (default 5)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_check_history)
    p = sub.add_parser("watch", help="the reconciliation service: reconcile every host now and then every "
                                     "interval, one line per change, until SIGTERM/SIGINT")
    p.add_argument("--interval", type=positive_seconds, default=30.0, help="seconds between ticks (default 30)")
    p.add_argument("--concurrency", type=positive_int, default=4, help="hosts probed at once (default 4)")
    p.add_argument("--timeout", type=positive_seconds, default=5.0, help="per-host bound in seconds (default 5)")
    p.add_argument("--grace", type=positive_seconds, default=30.0,
                   help="seconds before a job with no record of its end is declared lost (default 30)")
    p.add_argument("--once", action="store_true", help="one tick, then exit")
    p.add_argument("--verbose", action="store_true", help="also one line per tick with its counts")
    p.set_defaults(handler=cmd_watch)
    p = sub.add_parser("sagas", help="recent multi-step operations (submits, cancels) and their steps")
    p.add_argument("--unresolved", action="store_true", help="only those not completed or fully undone")
    p.add_argument("--limit", type=positive_int, default=20, help="how many (default 20)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_sagas)
    hosts = sub.add_parser("hosts", help="hosts jobs run on")
    hsub = hosts.add_subparsers(dest="hosts_command", metavar="COMMAND", required=True)
    p = hsub.add_parser("add", help="add or update a host")
    p.add_argument("name")
    p.add_argument("url", help="ssh://[user@]host[:port]; host may be an alias of ~/.ssh/config (HostName, User, "
                               "Port, IdentityFile, UserKnownHostsFile, HostKeyAlias are honoured)")
    p.add_argument("--key", help="private key file (unencrypted: no passphrase; default: the config's IdentityFile, "
                                 "else ~/.ssh/id_ed25519, id_ecdsa, id_rsa)")
    pinned = p.add_mutually_exclusive_group()
    pinned.add_argument("--known-host-key", help="the server's public host key, e.g. 'ssh-ed25519 AAAA...'")
    pinned.add_argument("--known-hosts", help="a known_hosts file holding the server's key (default: the config's "
                                              "UserKnownHostsFile, else ~/.ssh/known_hosts)")
    p.add_argument("--ssh-config", help="OpenSSH client config to resolve the host in (default ~/.ssh/config)")
    p.add_argument("--replace-host-key", action="store_true",
                   help="accept a host key that differs from the one pinned for this host name")
    p.add_argument("--base-dir", help="where the wrapper keeps its files on the host (default ~/.jobkit)")
    p.add_argument("--scheduler", default="tmux", help="what runs its jobs: tmux (default) or slurm (jobs are "
                                                        "batch jobs submitted from this login node)")
    p.add_argument("--partition", help="a batch scheduler's default partition for this host's jobs")
    p.set_defaults(handler=cmd_hosts_add)
    p = hsub.add_parser("ls", help="list hosts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_hosts_ls)
