# .venv/bin/python -m pytest tests/training/test_precision_cpu.py -q    (one slow test: a real 2-rank bf16 run on CPU)
"""16-bit precision on CPU ranks: bf16 trains (DeepSpeed's CPU accelerator has it, and CPUs with AVX-512-BF16 or AMX
multiply in it 2-3x faster than fp32); fp16, which it lacks, is refused before anything starts."""

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from helpers import cli, quick_sets
from trainer_core.common.errors import UserError
from trainer_core.config.hardware import detect
from trainer_core.config.run_config import load_config
from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.runs import orchestrate, protocol

QUICKSTART = PROJECT_ROOT / "configs" / "quickstart.yaml"
no_gpu = pytest.mark.skipif(detect().has_gpu, reason="about machines without a CUDA GPU")


@no_gpu
def test_fp16_without_a_gpu_is_refused_before_anything_starts(runs_root):
    with pytest.raises(UserError) as e:
        orchestrate.plan(load_config(QUICKSTART, ["train.precision=fp16"]))
    assert e.value.code == "runs.fp16_needs_gpu" and "bf16" in str(e.value)
    assert not any(runs_root.iterdir())


@no_gpu
@pytest.mark.slow
def test_bf16_trains_on_cpu_ranks(runs_root):
    """Before: the HF Trainer refused bf16 without a CUDA GPU ("Your setup doesn't support bf16/gpu"), a traceback
    from every rank."""
    sets = quick_sets(**{"train.precision": "bf16", "placement.num_ranks": 2, "train.max_steps": 2,
                         "train.save_steps": 0, "name": "bf16-cpu"})
    proc = cli("train", "configs/quickstart.yaml", *sets)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert protocol.read_status(run).state == protocol.COMPLETED
    log = (run / protocol.LOG).read_text(encoding="utf-8")
    assert "precision=bf16" in log
    metrics = [json.loads(line) for line in (run / protocol.METRICS).read_text(encoding="utf-8").splitlines()]
    losses = [m["loss"] for m in metrics if m.get("loss") is not None]
    assert losses and all(0 < x < 20 for x in losses)
    with safe_open(str(run / protocol.FINAL / "model.safetensors"), "pt") as st:
        assert {str(st.get_slice(k).get_dtype()) for k in st.keys()} == {"BF16"}
