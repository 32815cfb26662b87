"""The SLURM tier: one lab cluster per target and test session (``slurm``: login node + c1 + c2
with accounting; ``slurm-noacct``: one container, no slurmdbd), and a jobkit CLI whose store
knows it as a ``--scheduler slurm`` host."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jobkit import cli
from jobkit.lab import LabHost
from jobkit.lab.slurm import Cluster
from jobkit.store import Store


@pytest.fixture(scope="session")
def slurm_host(jobkit_slurm: LabHost) -> LabHost:
    """The plugin's session cluster (jobkit.pytest_plugin)."""
    return jobkit_slurm


@pytest.fixture(scope="session")
def noacct_host(jobkit_slurm_noacct: LabHost) -> LabHost:
    return jobkit_slurm_noacct


@dataclass
class Cli:
    """``jobkit`` in-process against a store of its own, the cluster added as host ``cl``."""

    home: Path
    host: LabHost
    capsys: Any = None

    @property
    def cluster(self) -> Cluster:
        c: Cluster = self.host.extra["cluster"]
        return c

    def run(self, *argv: str, ok: bool = True) -> tuple[int, str]:
        import contextlib
        import io
        import os

        old = os.environ.get("JOBKIT_HOME")
        os.environ["JOBKIT_HOME"] = str(self.home)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = cli.main(list(argv))
        finally:
            if old is None:
                os.environ.pop("JOBKIT_HOME", None)
            else:
                os.environ["JOBKIT_HOME"] = old
        assert "Traceback" not in err.getvalue()
        if ok:
            assert rc == 0, f"jobkit {' '.join(argv)}: exit {rc}: {err.getvalue()}"
        return rc, out.getvalue() + err.getvalue()

    def job(self, job_id: str) -> dict[str, Any]:
        s = Store(self.home / "store.db")
        try:
            j = s.job(job_id)
            hist = [h.status for h in s.history_entries(job_id)]
            return {"status": j.status.value, "exit": j.exit_code, "signal": j.signal, "source": j.status_source,
                    "reason": j.reason, "conflict": j.conflict, "sid": j.scheduler_job_id, "history": hist}
        finally:
            s.close()

    def wait(self, job_id: str, want: Callable[[dict[str, Any]], bool], seconds: float = 30.0) -> dict[str, Any]:
        """Reconcile until ``want(job)``; the last record otherwise (the assertion says it)."""
        deadline = time.monotonic() + seconds
        while True:
            self.run("reconcile")
            j = self.job(job_id)
            if want(j) or time.monotonic() > deadline:
                return j
            time.sleep(0.5)

    def sh(self, node: str, cmd: str, user: str = "root") -> str:
        rc, out = self.cluster.exec(node, cmd, user=user)
        assert rc == 0, f"{node}: {cmd}: exit {rc}: {out}"
        return out


def make_cli(host: LabHost, home: Path) -> Cli:
    c = Cli(home, host)
    spec = host.spec
    c.run("hosts", "add", "cl", f"ssh://{spec.user}@{spec.address}:{spec.port}", "--key", str(spec.private_key),
          "--known-host-key", str(spec.known_host_key), "--scheduler", "slurm")
    return c


@pytest.fixture(scope="module")
def slurm_cli(slurm_host: LabHost, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return make_cli(slurm_host, tmp_path_factory.mktemp("jk-slurm"))


@pytest.fixture(scope="module")
def noacct_cli(noacct_host: LabHost, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return make_cli(noacct_host, tmp_path_factory.mktemp("jk-noacct"))


def as_json(text: str) -> Any:
    return json.loads(text)
