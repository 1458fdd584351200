#!/usr/bin/env bash
# Create .venv and install the pinned requirements (idempotent; a stamp file skips pip when nothing changed).
# Usage: scripts/setup_env.sh [requirements-file]
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
python3 -m venv .venv 2>/dev/null || python3 -m venv .venv
stamp=".venv/.installed-$(cat requirements.txt "$req" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  extra=()
  # Our machines keep a CPU build of torch on local disk; elsewhere pip takes it from the index.
  [ -d /opt/wheels ] && extra+=(--find-links /opt/wheels)
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "${extra[@]}" -r "$req"
  touch "$stamp"
fi
