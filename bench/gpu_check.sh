#!/usr/bin/env bash
# GPU check on one H100 in <= 8 minutes: the tutorial's recipe vs ours on a random ~0.5B Qwen2 in bf16, a fixed
# number of steps each; prints tokens/s, MFU, peak allocated memory per rank vs the planner, NVML samples.
#   bash bench/gpu_check.sh [--steps 60] [--records 2000] [--data FILE]
# Needs the project venv (./run_tests.sh or ./run_app.sh creates it) and the starter model (its tokenizer is reused).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists no device); run this on a machine with one H100." >&2
    exit 2
fi
nvidia-smi -L
"$PY" -m trainer_core prepare-models >/dev/null
exec timeout 480 "$PY" bench/gpu_check.py "$@"
