#!/usr/bin/env bash
# Set everything up on a fresh machine and start the dashboard on http://127.0.0.1:8501 (the starter model is built
# on first start). Pass Streamlit flags through, e.g. ./run_app.sh --server.port 8600
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh requirements.txt
.venv/bin/python -m trainer_core prepare-models
exec .venv/bin/python -m app.serve "$@"
