#!/usr/bin/env bash
# Create .venv and install the pinned requirements (idempotent; a stamp file skips pip when nothing changed).
# Usage: scripts/setup_env.sh [--dry-run] [requirements-file]
#   --dry-run   print what would be installed (and from where) without creating or installing anything
# On a machine with an NVIDIA driver the CUDA build of the pinned torch is installed first; TORCH_INDEX_URL picks
# its index (default PyPI, whose Linux torch wheels are CUDA builds; e.g. https://download.pytorch.org/whl/cu128).
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
req="${1:-requirements.txt}"

run() {  # a command, or in a dry run its shell-quoted line
  if [ "$dry" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

# An NVIDIA driver: nvidia-smi answers, or the kernel module reports its version.
if { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } || [ -r /proc/driver/nvidia/version ]; then
  accel=cuda
else
  accel=cpu
fi
torch_pin="$(grep -E '^torch==' requirements.txt | head -n 1)"
echo "setup_env: accelerator $accel; $torch_pin" >&2

[ "$dry" = 1 ] || python3 -m venv .venv 2>/dev/null || python3 -m venv .venv
# The accelerator is part of the stamp on GPU machines only, so a CPU machine's existing stamp stays valid.
stamp=".venv/.installed-$( (cat requirements.txt "$req"; [ "$accel" = cpu ] || echo "$accel") | sha256sum | cut -c1-16)"
if [ "$dry" = 1 ] || [ ! -f "$stamp" ]; then
  run .venv/bin/python -m pip install -q --upgrade pip
  if [ "$accel" = cuda ]; then
    # A CPU build on pip's find-links (torch-X+cpu) also satisfies torch==X and sorts above it, so the CUDA build
    # is installed first with pip's configuration files and find-links left out; the requirements then find it
    # installed.
    run env -u PIP_FIND_LINKS -u PIP_NO_INDEX PIP_CONFIG_FILE=/dev/null .venv/bin/python -m pip install -q \
      --index-url "${TORCH_INDEX_URL:-https://pypi.org/simple}" "$torch_pin"
  fi
  # A machine that keeps a CPU build of torch on local disk says where through pip's own configuration
  # (PIP_FIND_LINKS or find-links in pip.conf); elsewhere pip takes torch from the index.
  run .venv/bin/python -m pip install -q -r "$req"
  if [ "$accel" = cuda ]; then
    # Say it now rather than let every run train on CPU ranks.
    run .venv/bin/python -c 'import sys, torch
sys.exit(0 if torch.version.cuda else "setup_env: torch %s is a CPU build on a machine with an NVIDIA driver; set TORCH_INDEX_URL to a CUDA index (e.g. https://download.pytorch.org/whl/cu128) and run again" % torch.__version__)'
  fi
  [ "$dry" = 1 ] || touch "$stamp"
fi
