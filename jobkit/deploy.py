"""Install or upgrade the wrapper and the server schema on a host, idempotently.

Layout under the base directory: ``bin/job_wrapper.sh``, ``server_schema.sql``, ``server.db``,
``jobs/`` and ``bin/.jobkit-version`` (content hash of what is installed). An unchanged host is
left untouched (one round trip); a changed file is uploaded through stdin to a temp file and
renamed into place; the database is created or upgraded from the schema.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from jobkit import wrapper_dir
from jobkit.errors import PrerequisiteMissing, RemoteCommandFailed
from jobkit.remote import base_dir_word
from jobkit.transport import Transport

#: Tools the wrapper and the runner need on a host. `flock` is not needed.
PREREQUISITES: tuple[str, ...] = ("sh", "tmux", "sqlite3", "setsid", "sync", "mv", "date", "awk",
                                  "sed", "mkdir", "sleep")


#: Columns of server.db's ``jobs`` added after its first version: an existing database gets them.
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (("token", "TEXT"),)


@dataclass(frozen=True)
class DeployReport:
    host: str
    version: str
    changed: bool
    base_dir: str


def bundle_version() -> tuple[str, bytes, bytes]:
    wrapper = (wrapper_dir() / "job_wrapper.sh").read_bytes()
    schema = (wrapper_dir() / "server_schema.sql").read_bytes()
    digest = hashlib.sha256(wrapper + b"\0" + schema).hexdigest()[:16]
    return digest, wrapper, schema


async def check_prerequisites(transport: Transport, timeout: float = 5.0) -> None:
    script = " ".join(
        f"command -v {t} >/dev/null 2>&1 || echo {t};" for t in PREREQUISITES
    )
    result = await transport.run(script, timeout=timeout)
    missing = result.stdout.split()
    if result.exit_status != 0 or missing:
        raise PrerequisiteMissing(
            f"missing on the host: {', '.join(missing) or 'unknown'} (install them first)",
            host=transport.host_name, stdout=result.stdout, stderr=result.stderr,
        )


async def deploy(transport: Transport, base_dir: str | None = None, timeout: float = 10.0) -> DeployReport:
    """Make the host run the wrapper and schema of this jobkit; return what happened."""
    base = base_dir_word(base_dir)
    version, wrapper, schema = bundle_version()
    # one round trip tells whether anything needs doing: installed version, database, base dir
    probe = await transport.run(
        f"printf 'version=%s\\n' \"$(cat {base}/bin/.jobkit-version 2>/dev/null)\"; "
        f"test -f {base}/server.db && echo db=yes; printf 'base=%s\\n' {base}", timeout=timeout
    )
    facts = dict(line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line)
    resolved = facts.get("base", base)
    if facts.get("version") == version and facts.get("db") == "yes":
        return DeployReport(transport.host_name, version, False, resolved)
    await check_prerequisites(transport, timeout)
    install = (
        "set -e; umask 022; b={base}; mkdir -p \"$b/bin\" \"$b/jobs\"; "
        "t=\"$b/bin/.{name}.$$\"; cat >\"$t\"; chmod {mode} \"$t\"; mv -f \"$t\" \"$b/{dest}\""
    )
    for name, dest, mode, data in (
        ("job_wrapper.sh", "bin/job_wrapper.sh", "755", wrapper),
        ("server_schema.sql", "server_schema.sql", "644", schema),
    ):
        await transport.run(install.format(base=base, name=name, mode=mode, dest=dest),
                            stdin=data.decode(), timeout=timeout, check=True)
    # CREATE TABLE IF NOT EXISTS leaves an older table as it is: add the columns added since
    upgrade = "".join(
        f" && {{ [ \"$(sqlite3 -batch -cmd '.timeout 5000' {base}/server.db \"SELECT count(*) FROM "
        f"pragma_table_info('jobs') WHERE name = '{col}'\")\" = 1 ] || sqlite3 -batch -bail -cmd '.timeout 5000' "
        f"{base}/server.db 'ALTER TABLE jobs ADD COLUMN {col} {kind}'; }}"
        for col, kind in ADDED_COLUMNS)
    db = await transport.run(
        f"sqlite3 -batch -bail -cmd '.timeout 5000' {base}/server.db <{base}/server_schema.sql >/dev/null"
        f"{upgrade} && printf '%s\\n' {version} >{base}/bin/.jobkit-version",
        timeout=timeout,
    )
    if db.exit_status != 0:
        raise RemoteCommandFailed("creating server.db from the schema failed", host=transport.host_name,
                                  exit_status=db.exit_status, stdout=db.stdout, stderr=db.stderr)
    return DeployReport(transport.host_name, version, True, resolved)
