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
step() { printf '\n==> %s\n' "$*"; }

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

step "wrapper: bats scenarios on every shell"
jobkit shells --require-all --json reports/shells.json

step "lab images (offline build; cached when unchanged)"
jobkit lab build

step "pytest: all tiers, under coverage"
rm -f .coverage .coverage.*
JOBKIT_HYPOTHESIS_PROFILE=${JOBKIT_HYPOTHESIS_PROFILE:-ci} coverage run -m pytest --junitxml=reports/pytest.xml
coverage combine -q
coverage report
coverage xml -q -o reports/coverage.xml
