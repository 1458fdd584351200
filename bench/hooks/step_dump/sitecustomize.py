"""Bench-only: what each recipe of bench/peer_bench.py actually trains, step by step (`peer_bench --dump`).

Nothing happens unless BENCH_STEP_DUMP names a folder. Then, on rank 0, once transformers.trainer is imported, every
Trainer call of `training_step` is recorded (one line of steps.jsonl per micro-batch): the batch as the loss sees it
(input_ids, labels, position_ids, whether an attention mask came with it), the `num_items_in_batch` the Trainer
passed, the loss returned, the learning rate the coming optimizer step uses, and how many times transformers looked
for packed sequences in the position ids (`find_packed_sequence_indices`: 0 means the rows' records attended to each
other). At the first step, setup.json records how the run resolved its optimizer and schedule: every optimizer
param group's hyper-parameters, the DeepSpeed JSON as filled in, clipping, gradient accumulation, precision,
dropout, gradient checkpointing, the model's `use_cache`, and `model_accepts_loss_kwargs` (whether the Trainer
leaves the accumulation scaling to compute_loss). Every `Trainer.log` dict goes to logs.jsonl (grad_norm, loss, lr).
Our trainer loads it through train_bench.hooks_env, the peers through bench/hooks/peer_probe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

OUT = os.environ.get("BENCH_STEP_DUMP")
PACKED_CALLS = [0]


def _plain(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


def _setup(trainer, model) -> dict:
    opt = trainer.optimizer
    groups = getattr(opt, "param_groups", None) or getattr(getattr(opt, "optimizer", None), "param_groups", [])
    base = trainer.accelerator.unwrap_model(trainer.model)
    base = getattr(base, "module", base)
    cfg = getattr(base, "config", None)
    ds = None
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        ds = plugin.deepspeed_config
    a = trainer.args
    return {
        "trainer_class": type(trainer).__name__,
        "param_groups": [{k: _plain(v) for k, v in g.items() if k != "params"} | {"n_params": len(g["params"]),
                         "n_elements": sum(p.numel() for p in g["params"])} for g in groups],
        "optimizer_class": type(getattr(opt, "optimizer", opt)).__name__,
        "scheduler": type(trainer.lr_scheduler).__name__, "max_steps": trainer.state.max_steps,
        "warmup_steps": a.get_warmup_steps(trainer.state.max_steps),
        "args": {k: _plain(getattr(a, k)) for k in (
                 "learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "seed", "data_seed",
                 "gradient_accumulation_steps", "per_device_train_batch_size", "bf16", "fp16",
                 "gradient_checkpointing", "average_tokens_across_devices", "optim", "label_smoothing_factor",
                 "neftune_noise_alpha")},
        "deepspeed_config": _plain(ds),
        "model_accepts_loss_kwargs": getattr(trainer, "model_accepts_loss_kwargs", None),
        "model_training": model.training, "model_dtype": str(next(base.parameters()).dtype),
        "use_cache": getattr(cfg, "use_cache", None), "attn_implementation": getattr(cfg, "_attn_implementation", None),
        "attention_dropout": getattr(cfg, "attention_dropout", None),
        "gradient_checkpointing_on": bool(getattr(base, "is_gradient_checkpointing", False)),
    }


def _install(module) -> None:
    out = Path(OUT)
    out.mkdir(parents=True, exist_ok=True)
    trainer_cls = module.Trainer
    training_step, log = trainer_cls.training_step, trainer_cls.log
    state = {"setup": False}

    def dumping_step(self, model, inputs, num_items_in_batch=None, *args, **kwargs):
        if not state["setup"]:
            state["setup"] = True
            try:
                setup = _setup(self, model)
            except Exception as e:  # a bench aid must not stop the run it watches
                setup = {"error": repr(e)}
            (out / "setup.json").write_text(json.dumps(setup, indent=1, ensure_ascii=False))
        row = {"step": self.state.global_step, "lr": self._get_learning_rate(),
               "num_items_in_batch": None if num_items_in_batch is None else int(num_items_in_batch),
               "has_attention_mask": "attention_mask" in inputs,
               **{k: inputs[k].tolist() for k in ("input_ids", "labels", "position_ids") if k in inputs}}
        before = PACKED_CALLS[0]
        loss = training_step(self, model, inputs, num_items_in_batch, *args, **kwargs)
        row["packed_mask_calls"] = PACKED_CALLS[0] - before
        row["loss"] = float(loss)
        with open(out / "steps.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        return loss

    def dumping_log(self, logs, *args, **kwargs):
        with open(out / "logs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.state.global_step, **{k: _plain(v) for k, v in logs.items()}}) + "\n")
        return log(self, logs, *args, **kwargs)

    trainer_cls.training_step = dumping_step
    trainer_cls.log = dumping_log


def _count_packed(module) -> None:
    find = module.find_packed_sequence_indices

    def counting(*args, **kwargs):
        PACKED_CALLS[0] += 1
        return find(*args, **kwargs)
    module.find_packed_sequence_indices = counting


if OUT and os.environ.get("RANK", "0") == "0":
    from bench.hooks.after_import import after_import

    after_import({"transformers.trainer": _install, "transformers.masking_utils": _count_packed})
    if os.environ.get("BENCH_PHASES") and not os.environ.get("BENCH_PEER_PROBE"):
        import bench.hooks.phase_timer.sitecustomize  # noqa: F401  (one sitecustomize per process: start it from here)
