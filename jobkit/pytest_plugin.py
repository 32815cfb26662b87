"""pytest plugin (entry point ``pytest11: jobkit``): lab hosts as fixtures, in any test suite.

    pytest --jobkit-targets=local,debian-bookworm,busybox

- ``jobkit_target``: the target name; a test that uses it (directly or through the fixtures
  below) runs once per chosen target.
- ``jobkit_host``: a ready :class:`jobkit.lab.LabHost` for that target, shared by the session
  (one container per target), with ``.spec`` (a :class:`jobkit.hosts.HostSpec`).
- ``jobkit_destructive_host``: a ready host of its own, stopped after the test.
- ``jobkit_lab``: the session's :class:`jobkit.lab.Lab`.
- ``jobkit_slurm`` / ``jobkit_slurm_noacct``: the session's SLURM lab cluster (login node
  ``.spec``, its scheduler ``slurm``; ``.extra["cluster"]`` the containers, for fault injectors),
  started once per session; skipped when Docker or the image is missing.

When a test using a host fails, the container's log (sshd) and the wrapper logs of that host
are attached to the test's report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterator
from typing import Any

import pytest

DEFAULT_TARGETS = "local"
_HOSTS_KEY = pytest.StashKey[list[Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jobkit")
    group.addoption(
        "--jobkit-targets", dest="jobkit_targets", default=None, metavar="LIST",
        help="comma-separated lab targets for jobkit_host fixtures (default: local); e.g. "
             "local,debian-bookworm,busybox",
    )
    parser.addini("jobkit_targets", "default for --jobkit-targets", default=DEFAULT_TARGETS)


def _targets(config: pytest.Config) -> list[str]:
    raw = config.getoption("jobkit_targets") or config.getini("jobkit_targets") or DEFAULT_TARGETS
    return [t.strip() for t in str(raw).split(",") if t.strip()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    explicit = any("jobkit_target" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize"))
    if "jobkit_target" in metafunc.fixturenames and not explicit:
        marker = metafunc.definition.get_closest_marker("jobkit_targets")
        targets = list(marker.args) if marker else _targets(metafunc.config)
        metafunc.parametrize("jobkit_target", targets, scope="session")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "jobkit_targets(*names): run this test on these lab targets instead of --jobkit-targets"
    )


@pytest.fixture(scope="session")
def jobkit_lab() -> Iterator[Any]:
    from jobkit.lab import Lab

    with Lab() as lab:
        yield lab


def _slurm(lab: Any, target: str) -> Any:
    from jobkit.lab import docker_available
    from jobkit.lab.build import image_id
    from jobkit.lab.targets import get_target

    if not docker_available() or image_id(get_target(target).image) is None:
        pytest.skip(f"needs Docker and the {target} image (jobkit lab build {target})")
    return lab.start(target)


@pytest.fixture(scope="session")
def jobkit_slurm(jobkit_lab: Any) -> Any:
    return _slurm(jobkit_lab, "slurm")


@pytest.fixture(scope="session")
def jobkit_slurm_noacct(jobkit_lab: Any) -> Any:
    return _slurm(jobkit_lab, "slurm-noacct")


@pytest.fixture
def jobkit_host(jobkit_lab: Any, jobkit_target: str, request: pytest.FixtureRequest) -> Any:
    host = jobkit_lab.start(jobkit_target)
    request.node.stash.setdefault(_HOSTS_KEY, []).append(host)
    return host


@pytest.fixture
def jobkit_destructive_host(jobkit_lab: Any, jobkit_target: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    host = jobkit_lab.start(jobkit_target, fresh=True)
    request.node.stash.setdefault(_HOSTS_KEY, []).append(host)
    yield host
    host.stop()


def _wrapper_logs(host: Any) -> str:
    from jobkit.transport_ssh import SSHTransport

    async def fetch() -> str:
        t = SSHTransport(host.spec)
        try:
            r = await t.run('for f in "$HOME"/.jobkit/jobs/*.wrapper.log; do [ -e "$f" ] && '
                            '{ echo "== $f"; tail -n 50 "$f"; }; done', timeout=5)
            return r.stdout
        finally:
            await t.close()

    try:
        return asyncio.run(fetch())
    except Exception as exc:
        return f"(could not fetch wrapper logs: {exc})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed and call.when in ("call", "setup"):
        for host in item.stash.get(_HOSTS_KEY, []):
            if host.container is not None or host.local is not None:
                report.sections.append((f"jobkit {host.target}: sshd log", host.logs() or "(empty)"))
                report.sections.append((f"jobkit {host.target}: wrapper logs", _wrapper_logs(host) or "(none)"))
    return report
