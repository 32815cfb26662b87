"""``jobkit conformance --mutate``: how many single-bug variants of a wrapper the suite catches.

Each operator plants one known bug (a trap dropped, the pid signalled instead of the group, the
state file written in place, ...) by a textual edit of the wrapper under test. An operator whose
pattern is not in the wrapper does not apply to it and says so; one that matches must change the
file (checked: a "mutant" equal to the original would be counted as a survivor it is not). Each
variant is checked with ``sh -n``, then run through the clauses on one target; it is **killed**
when some clause that passes on the original wrapper fails on it, **survives** when every such
clause still passes, and is **unknown** when the suite could not decide (an error of the target,
the variant's time budget spent): never guessed either way. The run on a variant stops at its
first failing clause.

Variants run in parallel only where the target allows it: each worker gets a host of its own
(a fresh in-process SSH server for ``local``, a fresh container for a lab target), because some
faults (an unreachable or slow host) act on the whole host; ``ssh://`` hosts take one variant at a
time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobkit.conformance.clauses import CLAUSES, Clause
from jobkit.conformance.context import Ctx
from jobkit.conformance.runner import ERROR, FAIL, NA, PASS, check_clause, setup_target
from jobkit.errors import ConfigError, JobkitError
from jobkit.faults import HostHandle
from jobkit.transport import Transport

KILLED, SURVIVED, UNKNOWN, NOT_APPLICABLE, INVALID = "killed", "survived", "unknown", "not applicable", "invalid"


class OperatorNotApplicable(Exception):
    """The operator's pattern is not in this wrapper: there is nothing for it to break."""


class OperatorDidNotChange(Exception):
    """The operator matched but left the file as it was: a defect of the operator."""


Edit = Callable[[str], tuple[str, int]]


@dataclass(frozen=True)
class Operator:
    name: str
    bug: str  # the bug the variant has, in a user's words
    edit: Edit  # text -> (new text, number of places changed)

    def apply(self, text: str) -> str:
        new, n = self.edit(text)
        if n == 0:
            raise OperatorNotApplicable(f"{self.name}: the wrapper has nothing this operator changes")
        if new == text:
            raise OperatorDidNotChange(f"{self.name}: matched {n} place(s) but the file is unchanged")
        return new


def _sub(pattern: str, repl: str | Callable[[re.Match[str]], str], which: str = "all") -> Edit:
    """A regex edit (multiline): every match, or only the first or the last one."""
    rx = re.compile(pattern, re.MULTILINE)

    def edit(text: str) -> tuple[str, int]:
        matches = [m for m in rx.finditer(text)  # never in a comment line
                   if not text[text.rfind("\n", 0, m.start()) + 1:m.start()].lstrip().startswith("#")]
        if not matches:
            return text, 0
        chosen = matches if which == "all" else [matches[0] if which == "first" else matches[-1]]
        out, pos = [], 0
        for m in chosen:
            out += [text[pos:m.start()], m.expand(repl) if isinstance(repl, str) else repl(m)]
            pos = m.end()
        out.append(text[pos:])
        return "".join(out), len(chosen)
    return edit


_TRAP = re.compile(r"^([ \t]*trap[ \t]+)('[^'\n]*'|\"[^\"\n]*\"|[A-Za-z_]\w*)([ \t]+[A-Z0-9 \t]+)[ \t]*$", re.MULTILINE)
_SIGNUM = {"HUP": "1", "INT": "2", "QUIT": "3", "TERM": "15"}


def _drop_trap(sig: str) -> Edit:
    """The last trap with an action that names SIG stops naming it (the line becomes `:` when
    SIG was its only signal)."""
    names = {sig, f"SIG{sig}", _SIGNUM[sig]}

    def edit(text: str) -> tuple[str, int]:
        hits = [m for m in _TRAP.finditer(text)
                if m.group(2) not in ("''", '""', "-") and names & set(m.group(3).split())]
        if not hits:
            return text, 0
        m = hits[-1]
        rest = [w for w in m.group(3).split() if w not in names]
        line = f"{m.group(1)}{m.group(2)} {' '.join(rest)}" if rest else f"{m.group(1).replace('trap', ':', 1)}"
        return text[:m.start()] + line.rstrip() + text[m.end():], 1
    return edit


def _signal_pid(text: str) -> tuple[str, int]:
    """In every line that runs kill, a negative pid (a process group) becomes the pid."""
    count = 0
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not re.search(r"\bkill\b", line) or line.lstrip().startswith("#"):
            continue
        new = re.sub(r'(["\s])-(\$\{?\w+\}?)', r"\1\2", line)
        if new != line:
            lines[i] = new
            count += 1
    return "\n".join(lines), count


OPERATORS: tuple[Operator, ...] = (
    Operator("drop_trap_hup", "SIGHUP is not trapped: a closed terminal or tmux kill-session kills the wrapper "
             "unrecorded", _drop_trap("HUP")),
    Operator("drop_trap_term", "SIGTERM is not trapped: a cancel kills the wrapper unrecorded", _drop_trap("TERM")),
    Operator("drop_trap_int", "SIGINT is not trapped", _drop_trap("INT")),
    Operator("drop_trap_quit", "SIGQUIT is not trapped", _drop_trap("QUIT")),
    Operator("signal_pid_not_group", "signals go to the job's pid, not to its process group: its children survive",
             _signal_pid),
    Operator("no_signal_forward", "a signal the wrapper receives is not forwarded to the job",
             _sub(r'^([ \t]*)signal_group "\$1" "\$job_pid"[^\n]*$', r"\1:")),
    Operator("no_setsid", "the job does not get a session and process group of its own",
             _sub(r"(\bexec\b[^\n#]*?)\bsetsid(?:[ \t]+--)?[ \t]+", r"\1")),
    Operator("no_kill_after_grace", "a job that ignores TERM is sent TERM again, never KILL, after the grace",
             _sub(r"((?:\bkill(?:[ \t]+-s)?|\bsignal_group)[ \t]+)-?(?:KILL|9)\b", r"\1TERM")),
    Operator("grace_ignored", "the grace period is not waited for: KILL right away",
             _sub(r'\bsleep[ \t]+"?\$\{?grace\}?"?', "sleep 0")),
    Operator("no_wait_for_group", "the wrapper stops waiting at the first signal: the record is written while the "
             "job may still run", _sub(r'^while \[ "\$sig_pending" = 1 \]; do', "while false; do")),
    Operator("state_in_place", "the state file is written in place (truncated, then written) instead of a temp "
             "file renamed over it",
             _sub(r'\bmv\b(?:[ \t]+-[-\w]*)*[ \t]+("?\$\{?\w+\}?"?)[ \t]+("?\$\{?\w*stat\w*\}?"?)',
                  r"{ cat \1 >\2 && rm -f \1; }")),
    Operator("skip_readback", "the temp state file is not read back and compared before the rename",
             _sub(r'\{ read -r (\w+) <"?\$\{?\w+\}?"?; \} 2>/dev/null &&\s*\[ "\$\1" = "\$\w+" \] &&\s*', "")),
    Operator("skip_fsync", "the temp state file is not flushed (sync) before the rename",
             _sub(r'\{ sync -- "\$\w+"(?: \$\{\w+:\+"\$\w+"\})? \|\| sync; \} 2>/dev/null &&\s*', "")),
    Operator("id_charset_weakened", "the job id check lets '.' and '/' through (path traversal)",
             _sub(r"\[!((?:[A-Za-z]-[A-Za-z]|ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz)[^\]\n]*)\]",
                  r"[!./\1]", which="first")),
    Operator("id_length_unchecked", "the job id's length is not limited",
             _sub(r'(\[ "\$\{#\w+\}" -gt )\d+( \])', r"\g<1>100000\2")),
    Operator("id_check_skipped", "an invalid job id is reported but the wrapper carries on",
             _sub(r"(invalid job id[^\n]*\n[ \t]*)exit[ \t]+\d+", r"\1:", which="first")),
    Operator("claim_not_exclusive", "the job id is claimed without O_EXCL (set -C): two starts of one id both run",
             _sub(r"^([ \t]*)set -C\b", r"\1:")),
    Operator("timestamp_no_utc_marker", "timestamps lose the ISO 8601 'T' and 'Z' (2026-01-02 03:04:05)",
             _sub(r"%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S")),
    Operator("timestamp_local_time", "timestamps are taken in local time but still marked Z (no date -u)",
             _sub(r"\bdate[ \t]+-u\b", "date")),
    Operator("epoch_is_seconds_field", "the epoch fields are the seconds of the minute (%S), not epoch seconds (%s)",
             _sub(r"(\bdate\b[^\n]*?[ +'\"])%s(?=['\"\s])", r"\1%S")),
    Operator("drop_db_final_update", "the final status is never written to the database",
             _sub(r"^[ \t]*(?:db_start|db_update)[ \t]+\"status = '\$status'[^\n]*$", ":", which="last")),
    Operator("drop_db_running_update", "the running status (pid, start) is never written to the database",
             _sub(r"^[ \t]*(?:\[ \"\$job_over\" (?:!?= [01]) \] \|\| )?(?:db_start|db_update)[ \t]+"
                  r"\"status = 'running'[^\n]*$",
                  ":", which="first")),
    Operator("running_overwrites_final", "the running UPDATE may overwrite a final status that committed first",
             _sub(r" AND status IN \('queued', 'running'\)", "")),
    Operator("db_missing_not_checked", "a missing database is opened anyway (sqlite3 creates an empty one)",
             _sub(r'\[ ! -[ef] "\$\{?db\}?" \]', "false")),
    Operator("db_no_busy_timeout", "sqlite3 runs with no busy timeout",
             _sub(r"\.timeout \$\{?\w+\}?", ".timeout 0")),
    Operator("db_no_retry", "a locked database is tried once",
             _sub(r"(JOBKIT_DB_RETRIES:-)\d+", r"\g<1>1")),
    Operator("exit_code_constant", "any non-zero exit of the job is recorded as 1",
             _sub(r"(\bexit_code=)\$\{?(?:rc|ret|status|code)\}?(?=\s|$)", r"\g<1>1")),
    Operator("signal_code_no_offset", "a signal is recorded as its number n, not 128+n",
             _sub(r"\$\(\(128 \+ (\$?\w+)\)\)", r"$((\1))")),
    Operator("wrapper_exit_zero", "the wrapper exits 0 whatever the job's exit status",
             _sub(r'^exit[ \t]+"?\$\{?\w+\}?"?[ \t]*$', "exit 0", which="last")),
    Operator("state_without_pid", "the state file does not record the job's pid",
             _sub(r'\\"pid\\":\$\{?\w+\}?,', "")),
    Operator("proc_start_wrong_field", "the process start time is read from the wrong /proc/PID/stat field",
             _sub(r"^([ \t]*)shift 19$", r"\1shift 18", which="first")),
    Operator("drop_boot_id", "the kernel boot id is not recorded",
             _sub(r"^[ \t]*\{ read -r boot_id <[^\n]*$", ":")),
    Operator("json_quote_unescaped", "a double quote in a JSON string is not escaped",
             _sub(r'e\["\\""\] = "\\\\\\""; ', "")),
    Operator("sql_quote_unescaped", "a single quote in an SQL string is not doubled",
             _sub(r"sed \"s/'/''/g\"", "cat")),
)


def operator_names() -> list[str]:
    return [o.name for o in OPERATORS]


@dataclass
class Variant:
    operator: str
    bug: str
    outcome: str  # killed | survived | unknown | not applicable | invalid
    killed_by: list[str] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"operator": self.operator, "bug": self.bug, "outcome": self.outcome, "killed_by": self.killed_by,
                "message": self.message, "seconds": round(self.seconds, 1)}


def shell_syntax_error(text: str) -> str | None:
    """``sh -n`` on TEXT: None when it parses, else the shell's complaint."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as fh:
        fh.write(text)
    try:
        proc = subprocess.run(["sh", "-n", fh.name], capture_output=True, text=True, timeout=30, check=False)
    finally:
        Path(fh.name).unlink()
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"sh -n exit {proc.returncode}")


def make_variants(text: str, operators: tuple[Operator, ...] = OPERATORS) -> list[tuple[Operator, str | None, str]]:
    """(operator, mutant text or None, why not) for each operator."""
    out: list[tuple[Operator, str | None, str]] = []
    for op in operators:
        try:
            out.append((op, op.apply(text), ""))
        except OperatorNotApplicable as exc:
            out.append((op, None, str(exc)))
    return out


def score(variants: list[Variant]) -> tuple[int, int]:
    """(killed, killed + survived): unknown, invalid and not-applicable variants do not count."""
    killed = sum(v.outcome == KILLED for v in variants)
    return killed, killed + sum(v.outcome == SURVIVED for v in variants)


# --- running ----------------------------------------------------------------------------------
async def run_clauses(t: Transport, lab_host: Any, wrapper: Path, schema: Path, base_dir: str,
                      clauses: list[Clause], *, stop_at_fail: bool) -> dict[str, tuple[str, str]]:
    """Clause id -> (outcome, message) for WRAPPER on one host, in a base directory of its own."""
    host = HostHandle(t, None, lab_host)
    base_abs, wrapper_abs = await setup_target(t, base_dir, wrapper, schema)
    host.base_dir = base_abs
    out: dict[str, tuple[str, str]] = {}
    try:
        for c in clauses:
            ctx = Ctx("mutant", host, base_abs=base_abs, wrapper_abs=wrapper_abs, grace=2)
            try:
                out[c.id] = await check_clause(c, ctx)
            finally:
                ctx.cleanup()
            if stop_at_fail and out[c.id][0] == FAIL:
                break
    finally:
        with contextlib.suppress(Exception):  # best effort: the variant's own directory only
            q = shlex.quote(base_abs)
            await t.run(f"tmux -S {q}/tmux.sock kill-server 2>/dev/null; rm -rf -- {q}", timeout=30)
    return out


@dataclass
class Worker:
    transport: Transport
    lab_host: Any


async def run_variants(workers: list[Worker], wrapper_text: str, schema: Path, clauses: list[Clause],
                       operators: tuple[Operator, ...], budget: float, workdir: Path,
                       say: Callable[[str], None]) -> tuple[dict[str, tuple[str, str]], list[Variant]]:
    """The original wrapper first (the clauses it fails cannot kill anything), then every variant."""
    original = workdir / "original.sh"
    original.write_text(wrapper_text)
    say(f"mutate: the original wrapper first ({len(clauses)} clauses)")
    try:
        base = await asyncio.wait_for(
            run_clauses(workers[0].transport, workers[0].lab_host, original, schema, "~/.jobkit-mutate/original",
                        clauses, stop_at_fail=False), timeout=budget * 3)
    except TimeoutError:
        raise JobkitError(f"the suite did not finish on the original wrapper within {budget * 3:g}s") from None
    except JobkitError:
        raise
    except Exception as exc:
        raise JobkitError(f"the target could not run the suite on the original wrapper: {exc}") from exc
    usable = [c for c in clauses if base.get(c.id, (ERROR, ""))[0] == PASS]
    if not usable:
        raise JobkitError("no clause passes on the original wrapper: a variant cannot be told from it")
    variants: list[Variant] = []
    queue: asyncio.Queue[tuple[Operator, str]] = asyncio.Queue()
    for op, text, why in make_variants(wrapper_text, operators):
        if text is None:
            variants.append(Variant(op.name, op.bug, NOT_APPLICABLE, message=why))
            continue
        bad = await asyncio.to_thread(shell_syntax_error, text)
        if bad:
            variants.append(Variant(op.name, op.bug, INVALID, message=f"sh -n: {bad}"))
            continue
        queue.put_nowait((op, text))
    total = queue.qsize()

    async def one(op: Operator, text: str, w: Worker) -> Variant:
        path = workdir / f"{op.name}.sh"
        path.write_text(text)
        path.chmod(0o755)
        start = time.monotonic()
        try:
            got = await asyncio.wait_for(
                run_clauses(w.transport, w.lab_host, path, schema, f"~/.jobkit-mutate/{op.name}", usable,
                            stop_at_fail=True), timeout=budget)
        except TimeoutError:
            return Variant(op.name, op.bug, UNKNOWN, message=f"the suite did not decide within {budget:g}s",
                           seconds=time.monotonic() - start)
        except Exception as exc:
            return Variant(op.name, op.bug, UNKNOWN, message=f"the target broke: {exc}",
                           seconds=time.monotonic() - start)
        seconds = time.monotonic() - start
        failed = [cid for cid, (o, _) in got.items() if o == FAIL]
        if failed:
            return Variant(op.name, op.bug, KILLED, failed, got[failed[0]][1][:300], seconds)
        errors = [cid for cid, (o, _) in got.items() if o in (ERROR, NA)]
        if errors:
            return Variant(op.name, op.bug, UNKNOWN, message=f"clause(s) {', '.join(errors)} could not be decided "
                           f"on this variant: {got[errors[0]][1][:200]}", seconds=seconds)
        return Variant(op.name, op.bug, SURVIVED, message=f"{len(got)} clauses pass", seconds=seconds)

    done = 0

    async def work(w: Worker) -> None:
        nonlocal done
        while not queue.empty():
            op, text = queue.get_nowait()
            v = await one(op, text, w)
            variants.append(v)
            done += 1
            detail = f"by {v.killed_by[0]}" if v.killed_by else v.message[:120]
            say(f"[{done}/{total}] {op.name}: {v.outcome} {detail} ({v.seconds:.0f}s)")

    await asyncio.gather(*(work(w) for w in workers))
    order = {o.name: i for i, o in enumerate(operators)}
    variants.sort(key=lambda v: order[v.operator])
    return base, variants


def render(variants: list[Variant], target: str, excluded: list[str]) -> str:
    killed, counted = score(variants)
    pct = f"{100 * killed / counted:.0f}%" if counted else "n/a"
    lines = [f"{'OPERATOR':<26} {'OUTCOME':<15} DETAIL"]
    for v in variants:
        detail = f"by {', '.join(v.killed_by)}" if v.killed_by else v.message
        lines.append(f"{v.operator:<26} {v.outcome:<15} {detail[:150]}")
    lines += ["", f"mutation score on {target}: {killed}/{counted} variants killed ({pct})"]
    rest = {o: sum(v.outcome == o for v in variants) for o in (UNKNOWN, NOT_APPLICABLE, INVALID)}
    extra = ", ".join(f"{n} {o}" for o, n in rest.items() if n)
    if extra:
        lines.append(f"not counted: {extra}")
    if excluded:
        lines.append(f"clauses that do not pass on the original wrapper (cannot kill): {', '.join(excluded)}")
    survivors = [v for v in variants if v.outcome == SURVIVED]
    if survivors:
        lines.append("survivors (bugs no clause catches):")
        lines += [f"  {v.operator}: {v.bug}" for v in survivors]
    return "\n".join(lines)


def main_mutate(args: argparse.Namespace) -> int:
    """``jobkit conformance --mutate``: everything the user gave is checked before anything starts."""
    from jobkit import wrapper_dir
    from jobkit.conformance.cli import ssh_target
    from jobkit.lab import Lab, docker_available
    from jobkit.lab.build import HASH_LABEL, build, image_label
    from jobkit.lab.targets import load_manifest
    from jobkit.transport_ssh import SSHTransport
    from jobkit.userinput import text_file, writable_dir

    names = [t.strip() for raw in (args.target or []) for t in raw.split(",") if t.strip()] or ["local"]
    if len(set(names)) != 1:
        raise ConfigError("--mutate runs on one target (default local); give a single --target")
    target = names[0]
    wrapper = text_file(args.wrapper or str(wrapper_dir() / "job_wrapper.sh"), "wrapper")
    schema = text_file(args.schema or str(wrapper_dir() / "server_schema.sql"), "schema")
    wanted = list(dict.fromkeys(getattr(args, "mutate_operator", None) or []))
    unknown_ops = [o for o in wanted if o not in operator_names()]
    if unknown_ops:
        raise ConfigError(f"unknown mutation operator(s) {', '.join(unknown_ops)}; "
                          f"operators: {', '.join(operator_names())}")
    operators = tuple(o for o in OPERATORS if not wanted or o.name in wanted)
    known = {c.id for c in CLAUSES}
    selected = [c for c in (args.clause or []) if c in known]
    if args.clause and not selected:
        raise ConfigError(f"no clause matches {', '.join(args.clause)}")
    clauses = [c for c in CLAUSES if not selected or c.id in selected]
    budget = float(getattr(args, "mutate_timeout", None) or 600)
    manifest = load_manifest()
    if target.startswith("ssh://"):
        spec = ssh_target(target, args.key, args.known_hosts)
    elif target != "local":
        if target not in manifest:
            raise ConfigError(f"unknown target {target!r}; lab targets: local, {', '.join(manifest)}")
        if not docker_available():
            raise ConfigError(f"target {target} needs a Docker engine, and none answers")
    report_dir = writable_dir(args.report_dir, "--report-dir")
    wrapper_text = wrapper.read_text()
    workers_n = 1 if target.startswith("ssh://") else (args.parallel or 2)
    applicable = sum(1 for _, t, _ in make_variants(wrapper_text, operators) if t is not None)
    workers_n = max(1, min(workers_n, applicable))

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    say(f"mutate: {len(operators)} operators, {applicable} apply to {wrapper}; target {target}, "
        f"{workers_n} variant(s) at once, at most {budget:g}s each")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="jobkit-mutate-"))
    try:
        with Lab() as lab:
            workers: list[Worker] = []
            for _ in range(workers_n):
                if target.startswith("ssh://"):
                    workers.append(Worker(SSHTransport(spec), None))
                    continue
                if target != "local" and not image_label(manifest[target].image, HASH_LABEL):
                    say(f"mutate: building {target} first (offline, cached afterwards)")
                    build(target)
                host = lab.start(target, fresh=True)
                workers.append(Worker(SSHTransport(host.spec), host))

            async def go() -> tuple[dict[str, tuple[str, str]], list[Variant]]:
                try:
                    return await run_variants(workers, wrapper_text, schema, clauses, operators, budget, workdir,
                                              say)
                finally:
                    for w in workers:
                        with contextlib.suppress(Exception):
                            await w.transport.close()

            base, variants = asyncio.run(go())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    excluded = [cid for cid, (o, _) in base.items() if o != PASS]
    print(render(variants, target, excluded))
    killed, counted = score(variants)
    report = {"version": 1, "wrapper": str(wrapper), "target": target, "seconds": round(time.monotonic() - started),
              "score": {"killed": killed, "counted": counted}, "original": {k: v[0] for k, v in base.items()},
              "excluded_clauses": excluded, "variants": [v.as_dict() for v in variants]}
    path = report_dir / "mutation.json"
    try:
        path.write_text(json.dumps(report, indent=2))
    except OSError as exc:
        raise JobkitError(f"the run is over but its report could not be written to {path}: {exc}") from exc
    print(f"\n{len(variants)} variants in {time.monotonic() - started:.0f}s; report: {path}")
    return 0


def register_arguments(p: argparse.ArgumentParser) -> None:
    from jobkit.userinput import positive_int

    p.add_argument("--mutate", action="store_true",
                   help="measure the suite's detection power: run it on single-bug variants of the wrapper "
                        "(on one target, local by default) and report which it kills and which survive")
    p.add_argument("--mutate-operator", action="append", metavar="NAME",
                   help=f"only these mutation operators (repeatable): {', '.join(operator_names())}")
    p.add_argument("--mutate-timeout", type=positive_int, default=600, metavar="SECONDS",
                   help="time allowed per variant before it is reported unknown (default 600)")


__all__ = ["KILLED", "NA", "OPERATORS", "SURVIVED", "Operator", "main_mutate", "make_variants", "register_arguments"]
