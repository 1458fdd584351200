#!/usr/bin/env bash
# Create .venv and install the pinned requirements (idempotent; a stamp file skips pip when nothing changed).
# Usage: scripts/setup_env.sh [requirements-file]
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
python3 -m venv .venv 2>/dev/null || python3 -m venv .venv
stamp=".venv/.installed-$(cat requirements.txt "$req" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # A machine that keeps a CPU build of torch on local disk says where through pip's own configuration
  # (PIP_FIND_LINKS or find-links in pip.conf); elsewhere pip takes torch from the index.
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$req"
  touch "$stamp"
fi
