"""Fixtures that put a state machine class on its host: the machines are module-level classes
(tests/stateful/test_runtime_machine.py), so a failing example printed by hypothesis replays as
a plain test that takes the same fixture (README: "Replaying a failure")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobkit.lab import Lab
from tests.stateful.machine import RuntimeMachine


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def _on_target(lab: Lab, machine: type[RuntimeMachine]) -> Iterator[type[RuntimeMachine]]:
    host = lab.start(machine.target, fresh=True)
    machine.host = host
    try:
        yield machine
    finally:
        for example in list(machine.open_examples):  # a replayed example that failed mid-way
            example._cleanup()
        del machine.host
        host.stop()


@pytest.fixture
def on_local(lab: Lab) -> Iterator[type[RuntimeMachine]]:
    from tests.stateful.test_runtime_machine import LocalMachine
    yield from _on_target(lab, LocalMachine)


@pytest.fixture
def on_bookworm(lab: Lab) -> Iterator[type[RuntimeMachine]]:
    from tests.stateful.test_runtime_machine import BookwormMachine
    yield from _on_target(lab, BookwormMachine)
