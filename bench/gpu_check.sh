#!/usr/bin/env bash
# GPU check on one H100 in <= 8 minutes: the tutorial's recipe vs ours on a random ~0.5B Qwen2 in bf16, a fixed
# number of steps each; prints tokens/s, MFU, peak allocated memory per rank vs the planner, NVML samples.
#   bash bench/gpu_check.sh [--steps 60] [--records 2000] [--data FILE]
# Peer comparison in one command: bench/peer_bench.py (ours, TRL's SFTTrainer, LLaMA-Factory's CLI; same records,
# DeepSpeed JSON and hyper-parameters) on the same random ~0.5B Qwen2, bf16, with the phase breakdown:
#   bash bench/gpu_check.sh --peers [--repeat 3] [--records 2000 --heldout 100] [--only ours,trl]
#   The peers' venvs (bench/peer_venvs.py, under .cache/peer-venvs/) are built on first use from PyPI: set PEER_TORCH
#   to this machine's CUDA torch pin (e.g. torch==2.13.0) first, or build them where PyPI can be reached.
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
if [ "${1:-}" = "--peers" ]; then
    shift
    work="$(mktemp -d -t gpu-peers-XXXXXX)"
    trap 'rm -rf "$work"' EXIT
    "$PY" bench/gpu_check.py --build-model "$work/qwen2-0.5b"
    timeout 1800 "$PY" bench/peer_bench.py --model "$work/qwen2-0.5b" --phases "$@"
    exit
fi
exec timeout 480 "$PY" bench/gpu_check.py "$@"
