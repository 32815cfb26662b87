#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run jobkit's main job: the conformance suite on the default
# targets — every offline lab target (built here, offline, cached) plus the embedded `local`
# target when a Docker engine answers; `local` alone otherwise. Extra arguments go to
# `jobkit conformance` (e.g. --target busybox, --wrapper PATH).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
if docker info >/dev/null 2>&1; then
  "$ROOT/.venv/bin/jobkit" lab build
fi
exec "$ROOT/.venv/bin/jobkit" conformance "$@"
