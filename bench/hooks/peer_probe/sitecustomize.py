"""Bench-only: the same clock, label count and held-out curve for every recipe of bench/peer_bench.py.

peer_bench puts this folder on PYTHONPATH for a peer's launch (TRL, LLaMA-Factory), so Python imports it at
start-up without the peer's code knowing. Nothing happens unless BENCH_PEER_PROBE names a folder holding
probe.json (eval_steps, repository root) and heldout.json (held-out records already encoded by bench/common.py).
On rank 0, once transformers.trainer is imported, every Trainer gets a callback that:
  - starts the clock at on_train_begin (after DeepSpeed and CPU Adam are built), as train_bench does for ours;
  - counts label tokens the way our trainer does: positions of labels[:, 1:] that are not -100 in each training
    batch given to compute_loss, and all input positions as tokens;
  - every eval_steps optimizer steps and at the last one scores the live model with bench.common.heldout_loss (the
    shared evaluator) and takes that time off the clock;
and writes result.json when training ends. With BENCH_PHASES also set (peer_bench --phases), it loads
bench/hooks/phase_timer/sitecustomize.py too, by path: a process imports only the first `sitecustomize` on its path, and
the phase timer's hooks work on any HF Trainer. result.json then carries the probe's evaluation seconds, which the
phase table takes off the loop as it does our trainer's Trainer.evaluate.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

OUT = os.environ.get("BENCH_PEER_PROBE")


def _install(module) -> None:
    probe = json.loads((Path(OUT) / "probe.json").read_text())
    from bench.common import heldout_loss  # torch-only, shared with every other recipe

    heldout = [SimpleNamespace(**e) for e in json.loads((Path(OUT) / "heldout.json").read_text())]
    counts = {"tokens": 0, "label_tokens": 0}
    trainer_cls = module.Trainer

    class Probe(module.TrainerCallback):
        def __init__(self):
            self.t0, self.eval_s, self.curve = None, 0.0, []

        def elapsed(self) -> float:
            return time.perf_counter() - self.t0 - self.eval_s

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.t0 = time.perf_counter()
            if model is not None:  # what the peer actually runs with, to label peer_bench's matched/default jobs
                dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
                self.as_run = {"gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
                               "attention": getattr(model.config, "_attn_implementation", None),
                               "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
                               "weight_dtype": dtype}

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % probe["eval_steps"] and state.global_step != state.max_steps:
                return
            at, t = self.elapsed(), time.perf_counter()
            self.curve.append((state.global_step, heldout_loss(model, heldout), at))
            self.eval_s += time.perf_counter() - t

        def on_train_end(self, args, state, control, **kw):
            (Path(OUT) / "result.json").write_text(json.dumps({
                "train_time_s": self.curve[-1][2] if self.curve else self.elapsed(),
                "steps": state.global_step, **counts, "eval_curve": self.curve, "probe_eval_s": self.eval_s,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "as_run": getattr(self, "as_run", None)}))

    init, compute_loss = trainer_cls.__init__, trainer_cls.compute_loss

    def init_with_probe(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(Probe())

    def counting_compute_loss(self, model, inputs, *args, **kwargs):
        if model.training and "labels" in inputs:
            counts["label_tokens"] += int((inputs["labels"][:, 1:] != -100).sum())
            counts["tokens"] += int(inputs["input_ids"].numel())
        return compute_loss(self, model, inputs, *args, **kwargs)

    trainer_cls.__init__ = init_with_probe
    trainer_cls.compute_loss = counting_compute_loss


if OUT and os.environ.get("RANK", "0") == "0":
    # A peer's launch need not have our checkout on its path: bench.hooks.after_import and bench.common live there.
    sys.path.insert(0, json.loads((Path(OUT) / "probe.json").read_text())["root"])
    from bench.hooks.after_import import after_import

    if os.environ.get("BENCH_PHASES"):
        import runpy

        # A process runs only the first sitecustomize on its path: load the phase timer's too; its hooks join ours
        # in bench.hooks.after_import's one registry.
        runpy.run_path(str(Path(__file__).resolve().parent.parent / "phase_timer" / "sitecustomize.py"))
    if os.environ.get("BENCH_STEP_DUMP"):  # peer_bench --dump: what the peer trains, step by step
        import runpy

        runpy.run_path(str(Path(__file__).resolve().parent.parent / "step_dump" / "sitecustomize.py"))
    after_import({"transformers.trainer": _install})
