"""The runtime's stateful model (tests/stateful/machine.py) on `local` (unit tier: the embedded
SSH target) and on one lab container (container tier). Profiles: JOBKIT_HYPOTHESIS_PROFILE=ci
(bounded, derandomised: the same examples every run) or thorough (more examples, longer runs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from jobkit.lab import Lab
from tests.conftest import PROFILE, STATEFUL_BUDGET
from tests.stateful.machine import RuntimeMachine


def _settings() -> settings:
    examples, steps = STATEFUL_BUDGET.get(PROFILE, STATEFUL_BUDGET["fast"])
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _run_on(lab: Lab, target: str) -> None:
    host = lab.start(target, fresh=True)

    class OnTarget(RuntimeMachine):
        pass

    OnTarget.host = host
    try:
        case = OnTarget.TestCase
        case.settings = _settings()
        case().runTest()
    finally:
        host.stop()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


@pytest.mark.unit
@pytest.mark.timeout(1800)
def test_the_runtime_model_on_local(lab: Lab) -> None:
    _run_on(lab, "local")


@pytest.mark.container
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_runtime_model_on_a_lab_container(lab: Lab) -> None:
    _run_on(lab, "debian-bookworm")
