"""The runtime's stateful model (tests/stateful/machine.py) on `local` (unit tier: the embedded
SSH target) and on one lab container (container tier). Profiles: JOBKIT_HYPOTHESIS_PROFILE=ci
(bounded, derandomised: the same examples every run) or thorough (more examples, longer runs).

The machines are module-level classes, put on their host by a fixture (tests/stateful/conftest.py):
a failing example is printed as a program (``state = LocalMachine()``, one line per step) that
runs as is in a test taking the same fixture."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests.conftest import PROFILE, STATEFUL_BUDGET, STATEFUL_TIME_BOUND
from tests.stateful.machine import RuntimeMachine


class LocalMachine(RuntimeMachine):
    target = "local"


class BookwormMachine(RuntimeMachine):
    target = "debian-bookworm"


def _settings() -> settings:
    examples, steps = STATEFUL_BUDGET.get(PROFILE, STATEFUL_BUDGET["fast"])
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _run(machine: type[RuntimeMachine]) -> None:
    case = machine.TestCase
    case.settings = _settings()
    case().runTest()


@pytest.mark.unit
@pytest.mark.timeout(STATEFUL_TIME_BOUND)
def test_the_runtime_model_on_local(on_local: type[RuntimeMachine]) -> None:
    _run(on_local)


@pytest.mark.container
@pytest.mark.slow
@pytest.mark.timeout(STATEFUL_TIME_BOUND)
def test_the_runtime_model_on_a_lab_container(on_bookworm: type[RuntimeMachine]) -> None:
    _run(on_bookworm)
