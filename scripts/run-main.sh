#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run jobkit's main job: the wrapper checked on this machine
# across every POSIX shell, printed as a scenario x shell table.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
exec "$ROOT/.venv/bin/jobkit" shells "$@"
