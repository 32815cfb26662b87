import os
import signal

import pytest
from hypothesis import HealthCheck, settings

from jobkit.lab import Lab, LabHost

# A test that presses Ctrl-C on a command (SIGINT to a child) plays a user at a terminal. When the
# suite itself was started in the background by a non-interactive shell (`cmd &`: a flake hunt,
# a CI runner's nohup), SIGINT arrives ignored and every child would inherit the ignoring: the
# command could never be interrupted and the test would hang instead of testing anything. With
# Python's handler installed here, children start with SIGINT's default action, as from a shell.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = ["pytester"]

# Profiles (JOBKIT_HYPOTHESIS_PROFILE): `fast` for development (the default), `ci` for the full
# run (scripts/run-tests.sh: bounded examples, derandomised, so every run tries the same examples
# and a failure replays as is), `thorough` for long hunts (more examples, more stateful steps).
# The examples database lives in .hypothesis/ (git-ignored), never in the repository.
PROFILE = os.environ.get("JOBKIT_HYPOTHESIS_PROFILE", "fast")
settings.register_profile("fast", max_examples=150, deadline=None)
settings.register_profile("ci", max_examples=600, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=3000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(PROFILE)
#: the state machines' budget per profile (tests/stateful): examples, steps per example
STATEFUL_BUDGET = {"fast": (5, 15), "ci": (15, 30), "thorough": (80, 50)}
#: the time bound of one machine's run (pytest-timeout): under ci about three times what it takes
#: on 2 busy cores (110 s on local, 140 s on debian-bookworm), so a run that outgrows the CI budget
#: fails on its own instead of eating the 30 minutes; thorough runs as long as it needs
STATEFUL_TIME_BOUND = 3600 if PROFILE == "thorough" else 600


def stateful_seed() -> int | None:
    """The seed hypothesis derives under ``derandomize`` for every RuleBasedStateMachine (the
    digest of its one runner function, the same for every machine: it changes only with the
    hypothesis version); None if this hypothesis no longer derives it that way."""
    try:
        from hypothesis.internal.compat import int_from_bytes
        from hypothesis.internal.reflection import function_digest
        from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test
        inner = get_state_machine_test(RuleBasedStateMachine, settings=settings(database=None)).hypothesis.inner_test
        return int(int_from_bytes(function_digest(inner)))
    except Exception:  # internals moved: the header says so rather than guess
        return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    import hypothesis

    s = settings.get_profile(PROFILE)
    if not s.derandomize:
        return [f"hypothesis {hypothesis.__version__} profile {PROFILE}: {s.max_examples} examples per property, "
                "random seed (printed with any failure)"]
    seed = stateful_seed()
    examples, steps = STATEFUL_BUDGET.get(PROFILE, STATEFUL_BUDGET["fast"])
    return [f"hypothesis {hypothesis.__version__} profile {PROFILE}: {s.max_examples} examples per property, "
            "derandomised: each property's seed is the digest of its own source, the same every run",
            f"hypothesis state machines: {examples} examples of {steps} steps within {STATEFUL_TIME_BOUND} s, "
            "derandomised seed "
            f"{'unknown' if seed is None else hex(seed)} "
            "(a failure replays with this hypothesis version, this code and this profile)"]


@pytest.fixture(scope="session")
def local_host(jobkit_lab: Lab) -> LabHost:
    """The embedded `local` target, shared by the session (jobkit_lab: the pytest plugin's lab)."""
    return jobkit_lab.start("local")
