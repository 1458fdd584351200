#!/usr/bin/env bash
# Set up (venv, pinned packages, starter model) and run the tests. Arguments go to pytest:
#   ./run_tests.sh                 everything (~29 min of pytest on this 2-core VM, 2026-12-07; fast ~4.5 min)
#   ./run_tests.sh -m "not slow"   the fast tests (~4.5 min)
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh requirements-dev.txt
.venv/bin/python -m trainer_core prepare-models >/dev/null
exec .venv/bin/python -m pytest "$@"
