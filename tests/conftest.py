import os

import pytest
from hypothesis import HealthCheck, settings

from jobkit.lab import Lab, LabHost

pytest_plugins = ["pytester"]

# `fast` for development (pytest -m unit), `thorough` for the full run (scripts/run-tests.sh).
settings.register_profile("fast", max_examples=150, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("JOBKIT_HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture(scope="session")
def local_host(jobkit_lab: Lab) -> LabHost:
    """The embedded `local` target, shared by the session (jobkit_lab: the pytest plugin's lab)."""
    return jobkit_lab.start("local")
