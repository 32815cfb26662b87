#!/usr/bin/env bash
# Hunt flaky tests: run the full pytest suite N times in a row (default 3) while every core is
# kept busy by a CPU load, then print how often each test failed. The load is bounded: one busy
# loop per core, each stopped by `timeout` after at most FLAKE_HUNT_MAX_SECONDS (default 4 h)
# and killed when this script ends, whatever way it ends. Exit 0 only when every run passed.
#   scripts/flake-hunt.sh [N] [PYTEST ARGS...]      e.g. scripts/flake-hunt.sh 3 -m 'not container'
# Reports: reports/flake-hunt/run-K.xml (JUnit) and reports/flake-hunt/summary.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
runs=${1:-3}
shift $(($# > 0 ? 1 : 0))
case $runs in '' | *[!0-9]* | 0) echo "usage: scripts/flake-hunt.sh [N>=1] [PYTEST ARGS...]" >&2; exit 2 ;; esac

bash scripts/setup.sh
export PATH=$ROOT/.venv/bin:$PATH
out=reports/flake-hunt
rm -rf "$out"
mkdir -p "$out"
if docker info >/dev/null 2>&1; then
  jobkit lab build >/dev/null
fi

load_pids=()
stop_load() {
  for p in "${load_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${load_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop_load EXIT
trap 'exit 130' INT TERM
cores=$(nproc)
for _ in $(seq 1 "$cores"); do
  timeout "${FLAKE_HUNT_MAX_SECONDS:-14400}" sh -c 'while :; do :; done' &
  load_pids+=("$!")
done
echo "flake-hunt: $runs run(s) of the full pytest suite, $cores core(s) kept busy by $cores busy loop(s)" >&2

failed_runs=0
for i in $(seq 1 "$runs"); do
  started=$(date +%s)
  if JOBKIT_HYPOTHESIS_PROFILE=${JOBKIT_HYPOTHESIS_PROFILE:-ci} pytest -q -p no:cacheprovider \
      --junitxml="$out/run-$i.xml" "$@" >"$out/run-$i.log" 2>&1; then
    verdict=passed
  else
    verdict=FAILED
    failed_runs=$((failed_runs + 1))
  fi
  printf 'flake-hunt: run %s/%s %s in %ss (load average %s)\n' "$i" "$runs" "$verdict" "$(($(date +%s) - started))" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" >&2
done
stop_load

python3 - "$out" "$runs" <<'EOF' | tee "$out/summary.txt"
import sys
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree as ET

out, runs = Path(sys.argv[1]), int(sys.argv[2])
fails: Counter[str] = Counter()
total = 0
for k in range(1, runs + 1):
    path = out / f"run-{k}.xml"
    if not path.exists():
        fails["(run %d produced no report: see run-%d.log)" % (k, k)] += 1
        continue
    for case in ET.parse(path).getroot().iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            fails[f"{case.get('classname')}::{case.get('name')}"] += 1
print(f"{runs} loaded run(s), {total} test results, {sum(fails.values())} failure(s)")
for name, n in fails.most_common():
    print(f"  {n}/{runs}  {name}")
EOF
[ "$failed_runs" = 0 ]
