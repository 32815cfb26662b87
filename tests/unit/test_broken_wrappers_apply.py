"""Every broken and deviant wrapper still builds from the current wrapper: a patch whose anchor a
wrapper change moved fails here, in the fast tier, not as a slow conformance test's error."""

from __future__ import annotations

import subprocess

import pytest

from tests.broken_wrappers import BUGS, DEVIANTS, Bug, Deviant, broken_text, deviant_text


@pytest.mark.parametrize("bug", BUGS, ids=[b.name for b in BUGS])
def test_each_broken_wrapper_builds_and_parses(bug: Bug) -> None:
    text = broken_text(bug)
    shell = "bash" if "bash" in text.partition("\n")[0] else "sh"
    subprocess.run([shell, "-n"], input=text, text=True, check=True)


@pytest.mark.parametrize("deviant", DEVIANTS, ids=[d.name for d in DEVIANTS])
def test_each_deviant_wrapper_builds_and_parses(deviant: Deviant) -> None:
    text = deviant_text(deviant)
    shell = "bash" if "bash" in text.partition("\n")[0] else "sh"
    subprocess.run([shell, "-n"], input=text, text=True, check=True)
