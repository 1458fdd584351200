#!/usr/bin/env bash
# GPU check for the GPU check machine (no network there; docs/gpu_check.md has the exact `run` tool call):
#   bash bench/gpu_check.sh --prepare   here, where PyPI is reachable: builds .cache/gpu_wheelhouse (our pinned wheels
#                                       for CPython 3.12 x86-64, DeepSpeed built as a pure wheel, qwen.tiktoken;
#                                       bitsandbytes for the QLoRA case when it fits the carry limit)
#   bash bench/gpu_check.sh             on the GPU machine, from the repo root, the wheelhouse carried: installs it into
#                                       a venv over the image's CUDA torch without network, then bench/gpu_check.py
#   bash bench/gpu_check.sh --dry-run   the same with the GPU steps skipped (proves the offline install here)
# Environment: OUT (where the figures go; the run tool sets it), GPU_CHECK_PYTHON (the interpreter that has torch;
# default python3), GPU_CHECK_BUDGET_S (seconds until everything has ended; default 540, dry run 1800), GPU_CHECK_STEPS (optimizer
# steps per training run; default 2), GPU_CHECK_KEEP=1 (keep the work folder).
# Every process it starts carries GPU_CHECK_WORK=<its work folder>; on exit the runs under that folder are stopped with
# our own `trainer_core stop --force` and whatever process still carries the mark is ended.
set -uo pipefail
cd "$(dirname "$0")/.."
WH=.cache/gpu_wheelhouse
case "${1:-}" in
    --prepare) exec "${PYTHON:-.venv/bin/python}" bench/gpu_wheelhouse.py ;;
    --dry-run) DRY=--dry-run ;;
    "") DRY= ;;
    *) echo "usage: bash bench/gpu_check.sh [--prepare | --dry-run]" >&2; exit 2 ;;
esac
START=$(date +%s)
if [ -n "$DRY" ]; then
    BUDGET="${GPU_CHECK_BUDGET_S:-1800}"  # CPU steps on a shared machine
    # DeepSpeed's CPU ops (the CPU accelerator's shm comm op) build once per Python, 2+ minutes: kept between dry runs.
    export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/gpu-check-torch-extensions}"
else
    BUDGET="${GPU_CHECK_BUDGET_S:-540}"
fi
DEADLINE=$((START + BUDGET))
OUT="${OUT:-$PWD/.cache/gpu-check-out}"
mkdir -p "$OUT"
if [ ! -f "$WH/requirements.txt" ]; then
    echo "gpu_check: no wheelhouse at $WH; build it with 'bash bench/gpu_check.sh --prepare' where PyPI is reachable" \
         "and carry it (docs/gpu_check.md)" | tee "$OUT/gpu_check.md" >&2
    exit 2
fi
if [ -z "$DRY" ] && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists none); use --dry-run to check the install" >&2
    exit 2
fi
BASE_PY="${GPU_CHECK_PYTHON:-python3}"
WORK="$(mktemp -d /tmp/gpu-check-XXXXXX)"
VENV="$WORK/venv"
VPY="$VENV/bin/python"
export GPU_CHECK_WORK="$WORK" TRAINER_RUNS_ROOT="$WORK/runs" TRAINER_LOCK_DIR="$WORK/locks" \
    TRAINER_CACHE_DIR="$WORK/cache" TRAINER_MODELS_DIR="$WORK/models" QWEN_TIKTOKEN_FILE="$PWD/$WH/qwen.tiktoken" \
    PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT  # the wheelhouse alone

cleanup() {
    trap - EXIT INT TERM
    if [ -x "$VPY" ]; then
        for run in "$WORK"/runs/*/; do
            [ -d "$run" ] && timeout 60 "$VPY" -m trainer_core stop "$run" --force >/dev/null 2>&1
        done
        timeout 60 "$VPY" bench/gpu_check.py reap --work "$WORK"
    fi
    [ "${GPU_CHECK_KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

install() {
    # A venv made from the image's python3, which is itself a venv: --system-site-packages would reach the base
    # interpreter's packages, not the image's, so a .pth adds the image's site-packages after the venv's own (ours win).
    if "$BASE_PY" -m venv --system-site-packages "$VENV"; then
        PIP=("$VPY" -m pip)
    else
        "$BASE_PY" -m venv --system-site-packages --without-pip --clear "$VENV" || return 1
        PIP=("$BASE_PY" -m pip --python "$VPY")
    fi
    "$BASE_PY" - "$VENV" <<'EOF' || return 1
import site, sys, sysconfig
from pathlib import Path
venv_site = Path(sysconfig.get_path("purelib", vars={"base": sys.argv[1], "platbase": sys.argv[1]}))
venv_site.mkdir(parents=True, exist_ok=True)
lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages() if Path(d).is_dir())
(venv_site / "_gpu_check_image.pth").write_text(lines)
print("image site-packages added:", *site.getsitepackages())
EOF
    "${PIP[@]}" install --no-index --no-compile --find-links "$WH/wheels" -r "$WH/requirements.txt" || return 1
    # bitsandbytes (QLoRA) when the wheelhouse has it; without it the qlora case reports the trainer's refusal.
    if [ -s "$WH/optional.txt" ]; then
        "${PIP[@]}" install --no-index --no-compile --find-links "$WH/wheels" -r "$WH/optional.txt" \
            || echo "gpu_check: optional wheels not installed (the QLoRA case will say so)"
    fi
    "$VPY" -c "import torch, deepspeed, transformers, trl, peft, trainer_core, trainer_core.training.train
print('imports ok: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| transformers',
      transformers.__version__, '| trl', trl.__version__)"
}

echo "gpu_check: work folder $WORK; installing the wheelhouse ($(du -sh "$WH" | cut -f1)) into $VENV over $BASE_PY"
if ! install >"$OUT/install.log" 2>&1; then
    tail -30 "$OUT/install.log" >&2
    { echo "# GPU check"; echo; echo "The offline install from $WH failed after $(($(date +%s) - START))s:"; echo;
      echo '```'; tail -30 "$OUT/install.log"; echo '```'; } >"$OUT/gpu_check.md"
    exit 1
fi
tail -1 "$OUT/install.log"
echo "gpu_check: installed in $(($(date +%s) - START))s"
left=$((DEADLINE - $(date +%s)))
timeout -k 20 $((left > 60 ? left : 60)) "$VPY" bench/gpu_check.py run --work "$WORK" --out "$OUT" \
    --deadline "$DEADLINE" --steps "${GPU_CHECK_STEPS:-2}" $DRY
rc=$?
echo "gpu_check: done in $(($(date +%s) - START))s (exit $rc); figures in $OUT"
exit $rc
