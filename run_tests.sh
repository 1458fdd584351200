#!/usr/bin/env bash
# Set up (venv, pinned packages, starter model) and run the tests. Arguments go to pytest:
#   ./run_tests.sh                 everything (25-27 min of pytest in CI on 2 cores, 2026-12-03; fast ~5 min)
#   ./run_tests.sh -m "not slow"   the fast tests, in seconds
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh requirements-dev.txt
.venv/bin/python -m trainer_core prepare-models >/dev/null
exec .venv/bin/python -m pytest "$@"
