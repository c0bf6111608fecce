#!/usr/bin/env bash
# Install atasks into ./.venv and run the scenarios in loopback mode (no broker needed).
# Extra arguments go to `atasks run`, e.g. ./dev/run.sh -o n=15 (over a broker, set ATASKS_SECRET)
set -euo pipefail
cd "$(dirname "$0")/.."
source dev/venv.sh
exec .venv/bin/atasks run examples/scenarios.py "$@"
