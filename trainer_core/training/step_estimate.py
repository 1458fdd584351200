"""How many optimizer steps a run will take, known before its ranks start: the trainer's own row building
(validation, split, truncation, packing) and the HF Trainer's step arithmetic, so the Monitor can show "0 / ≈N"
while DeepSpeed starts up instead of "0 / ?".

It sits with training, not data, because it runs training's own `build_rows`: one row builder, one count."""

from __future__ import annotations

import math

from trainer_core.config.run_config import RunConfig


def steps_for_rows(cfg: RunConfig, n_rows: int) -> int:
    """The Trainer's max_steps for n_rows training rows: batches per rank (every rank gets ceil(rows / world)
    rows), optimizer steps per epoch (a partial accumulation still steps), times the epochs."""
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    batches = math.ceil(math.ceil(n_rows / cfg.world_size) / cfg.train.micro_batch_size)
    per_epoch = max(math.ceil(batches / cfg.train.gradient_accumulation), 1)
    return math.ceil(cfg.train.epochs * per_epoch)


def estimate_total_steps(cfg: RunConfig) -> int:
    """Total optimizer steps of a run with this (resolved) config; loads the tokenizer and encodes the data (cached
    by the tokenize cache, as the trainer will)."""
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    from trainer_core.models.local import load_tokenizer
    from trainer_core.training.train import build_rows  # torch and the trainer load only when asked

    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    train_rows, _ = build_rows(cfg, tokenizer, log=lambda _line: None)
    return steps_for_rows(cfg, len(train_rows))
