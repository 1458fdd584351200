#!/usr/bin/env bash
# Set up (venv, pinned packages, starter model) and run the tests. Arguments go to pytest:
#   ./run_tests.sh                 everything (~20 min on 2 cores: fast ~3 min, slow ~16 min)
#   ./run_tests.sh -m "not slow"   the fast tests, in seconds
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh requirements-dev.txt
.venv/bin/python -m trainer_core prepare-models >/dev/null
exec .venv/bin/python -m pytest "$@"
