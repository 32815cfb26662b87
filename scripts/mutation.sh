#!/usr/bin/env bash
# Mutation testing of the Python core (mutmut): the pure merge, the probe's parser, the store's
# verdict writes and the history checker ([tool.mutmut] in pyproject.toml). Prints the score per
# module and per function, and writes reports/mutation.txt. Takes ~15 minutes on 2 cores.
#   scripts/mutation.sh            run, then summarise
#   scripts/mutation.sh --summary  summarise the last run (mutants/ is kept until the next run)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ "${1:-}" != --summary ]; then
  bash scripts/setup.sh
  rm -rf mutants
  # mutmut copies the tree into mutants/ and runs the selected tests there; the fast hypothesis
  # profile keeps one mutant's run to seconds
  JOBKIT_HYPOTHESIS_PROFILE=fast .venv/bin/mutmut run >/dev/null 2>&1 || true
fi
mkdir -p reports
.venv/bin/mutmut results --all=true 2>/dev/null | .venv/bin/python scripts/mutation_summary.py | tee reports/mutation.txt
