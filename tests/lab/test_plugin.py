"""The pytest plugin, as a user's own test suite would use it."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_fixtures_run_a_test_per_target_and_attach_logs_on_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
        import asyncio
        from jobkit.transport_ssh import SSHTransport

        def test_login(jobkit_host, jobkit_target):
            assert jobkit_host.target == jobkit_target == "local"
            assert jobkit_host.spec.known_host_key

        def test_fails_after_running_a_job(jobkit_host):
            async def go():
                t = SSHTransport(jobkit_host.spec)
                await t.run('"$HOME/.jobkit/bin/job_wrapper.sh" jlog true', check=True)
                await t.close()
            asyncio.run(go())
            assert False, "deliberate"
        """
    )
    result = pytester.runpytest_subprocess("--jobkit-targets=local", "-v", "-p", "no:cacheprovider",
                                           "-W", "default")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_login?local? PASSED*"])
    result.stdout.fnmatch_lines(["*jobkit local: wrapper logs*", "*jlog.wrapper.log*"])
