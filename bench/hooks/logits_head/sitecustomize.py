"""Bench-only: our trainer with the logits head loss (bench/train_bench.py --ablation, recipe ours-logits-head).

train_bench puts this folder on the ranks' PYTHONPATH for that recipe only. Once trainer_core.training.loss is
imported, every LabelledLoss is built with head_loss="logits" (the choice `--head-loss logits` makes for a rank
started by hand), so the run measures logits at the labelled positions and plain cross-entropy instead of the
blockwise head. Python imports one sitecustomize only: with --phases as well, the phase timer is started from here.
"""

from __future__ import annotations

import os

from bench.hooks.after_import import after_import


def _logits_head(module) -> None:
    init = module.LabelledLoss.__init__

    def logits_init(self, head_loss: str = "auto", **kwargs):
        init(self, "logits", **kwargs)
    module.LabelledLoss.__init__ = logits_init


after_import({"trainer_core.training.loss": _logits_head})
if os.environ.get("BENCH_PHASES"):
    import bench.hooks.phase_timer.sitecustomize  # noqa: F401  (installs its own hooks on import)
