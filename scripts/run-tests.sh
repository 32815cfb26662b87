#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every test: linters, the wrapper's bats matrix on every
# shell, and pytest (all tiers) under coverage. `--fast` runs only the linters and the unit tier.
# Reports land in reports/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
fast=0
[ "${1:-}" = --fast ] && fast=1

bash scripts/setup.sh
export PATH=$ROOT/.venv/bin:$PATH
mkdir -p reports
step() { printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

step "shellcheck"
shellcheck -s sh wrapper/job_wrapper.sh
shellcheck scripts/*.sh .ci/run
shellcheck -s bash tests/bats/helpers.bash tests/bats/wrapper.bats
step "ruff"
ruff check jobkit tests bench
step "mypy (strict) on jobkit/"
mypy

if [ "$fast" = 1 ]; then
  step "pytest: unit tier"
  pytest -m unit -q
  exit 0
fi

# The lab images build (mostly downloads and unpacking) while the bats scenarios run (mostly the
# wrapper's processes): the two overlap instead of adding up. The build's output is shown when it
# is over; a failed build fails the run.
step "lab images: offline build (cached when unchanged) started in the background, log in reports/lab-build.log"
setsid -w jobkit lab build >reports/lab-build.log 2>&1 & # a group of its own: stopped whole on exit
build_pid=$!
trap 'kill -- "-$build_pid" 2>/dev/null || true' EXIT

step "wrapper: bats scenarios on every shell"
jobkit shells --require-all --json reports/shells.json

step "lab images: waiting for the build"
build_rc=0
wait "$build_pid" || build_rc=$?
trap - EXIT
grep -v ': Step \|^ ---> \|^Removing intermediate\|^Successfully' reports/lab-build.log | tail -n 40
if [ "$build_rc" != 0 ]; then
  echo "run-tests: jobkit lab build failed (exit $build_rc); its whole log: reports/lab-build.log" >&2
  exit "$build_rc"
fi

step "pytest: all tiers, under coverage"
rm -f .coverage .coverage.*
JOBKIT_HYPOTHESIS_PROFILE=${JOBKIT_HYPOTHESIS_PROFILE:-ci} coverage run -m pytest --junitxml=reports/pytest.xml
coverage combine -q
coverage report
coverage xml -q -o reports/coverage.xml
step "done"
