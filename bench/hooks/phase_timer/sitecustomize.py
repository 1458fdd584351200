"""Bench-only: where a training step's time goes (bench/train_bench.py --phases).

train_bench puts this folder on PYTHONPATH for its launches, so Python imports this file at start-up in every
process, the baseline's and ours alike, without either recipe's code knowing. Nothing happens unless BENCH_PHASES
names a folder. It then times, on rank 0, after their modules are imported:
  Trainer.training_step      one optimizer step's work (the recipes compared accumulate no gradients);
  DeepSpeedEngine.backward   backward, including ZeRO's gradient reduction and copies into its flat buffers;
  ZeRO-1/2 gradient handling within it (DeepSpeedZeroOptimizer's per-parameter gradient hooks and the epilogue
                             after backward: bucketing, reduction, copies into the optimizer's fp32 buffers, the
                             per-parameter overflow checks and norms);
  DeepSpeedEngine.step       the optimizer step (CPU Adam, copying the updated weights back);
  Trainer.evaluate           in-training evaluations, which are not training time;
and writes phases.json when Trainer.train returns. Forward + loss is the time from a training step's start to its
backward's start; "between steps" is what the training loop spends outside training_step (loading and collating
the next batch, callbacks, logging).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

OUT = os.environ.get("BENCH_PHASES")
TOTALS: dict[str, list[float]] = {}  # phase -> [seconds, calls]
MARKS = {"first_step": None, "step_start": None}


def _add(phase: str, seconds: float) -> None:
    total = TOTALS.setdefault(phase, [0.0, 0])
    total[0] += seconds
    total[1] += 1


def _timed(phase: str, fn, on_start=None):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        if on_start:
            on_start(t)
        try:
            return fn(*args, **kwargs)
        finally:
            _add(phase, time.perf_counter() - t)
    return wrapper


def _step_started(t: float) -> None:
    MARKS["step_start"] = t
    if MARKS["first_step"] is None:
        MARKS["first_step"] = t


def _backward_started(t: float) -> None:
    if MARKS["step_start"] is not None:
        _add("forward_loss", t - MARKS["step_start"])
        MARKS["step_start"] = None  # one forward per step: only the first backward after a step's start counts


def _dump() -> None:
    ended = time.perf_counter()  # Trainer.train returned: the loop has ended
    out = Path(OUT)
    out.mkdir(parents=True, exist_ok=True)
    window = ended - (MARKS["first_step"] or ended)  # first training step's start to the loop's end
    (out / "phases.json").write_text(json.dumps({"totals": TOTALS, "window_s": window}))


def _patch_trainer(module) -> None:
    trainer = module.Trainer
    step = trainer.training_step
    trainer.training_step = _timed("training_step", step, _step_started)
    trainer.evaluate = _timed("evaluate", trainer.evaluate)
    train = trainer.train

    def train_then_dump(*args, **kwargs):
        result = train(*args, **kwargs)
        _dump()
        return result
    trainer.train = train_then_dump


def _patch_engine(module) -> None:
    engine = module.DeepSpeedEngine
    engine.backward = _timed("backward", engine.backward, _backward_started)
    engine.step = _timed("optimizer_step", engine.step)


def _patch_zero(module) -> None:
    zero = module.DeepSpeedZeroOptimizer
    for name in ("reduce_ready_partitions_and_remove_grads", "overlapping_partition_gradients_reduce_epilogue"):
        setattr(zero, name, _timed("zero_grads", getattr(zero, name)))


HOOKS = {"transformers.trainer": _patch_trainer, "deepspeed.runtime.engine": _patch_engine,
         "deepspeed.runtime.zero.stage_1_and_2": _patch_zero}


if OUT and os.environ.get("RANK", "0") == "0":
    from bench.hooks.after_import import after_import

    after_import(HOOKS)
