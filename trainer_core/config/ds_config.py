"""DeepSpeed JSON: build it from the run config, lint any config (ours or hand-written), load presets.

Values the HF Trainer owns (batch sizes, clipping, precision, optimizer hyper-parameters) are left as "auto" so the
run config stays the single source of truth; the Trainer fills them in at launch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_core.common import paths
from trainer_core.config.run_config import RunConfig
from trainer_core.config.sections import (OFFLOAD_DEVICES, is_system_dir, not_absolute, offload_stage_problems, short,
                                          system_dir)
from trainer_core.common import safe_json
from trainer_core.common.errors import Text, UserError, text
from trainer_core.common.lint import Lint
from trainer_core.common.user_files import read_text

PRESETS_DIR = paths.CONFIGS_DIR / "deepspeed"


def build_ds_config(cfg: RunConfig, *, on_gpu: bool = False) -> dict[str, Any]:
    """The DeepSpeed config for a run. `on_gpu` only changes pinned memory, which CPU-only hosts cannot use."""
    if cfg.deepspeed.config_file:
        return load_ds_json(Path(cfg.deepspeed.config_file))
    ds = cfg.deepspeed
    zero: dict[str, Any] = {
        "stage": ds.stage,
        "overlap_comm": on_gpu,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if ds.stage in (1, 2):
        zero.update({"allgather_partitions": True, "allgather_bucket_size": 5e8, "reduce_scatter": True})
    if ds.stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": 1e9,
            "stage3_max_reuse_distance": 1e9,
            # Without this a ZeRO-3 save writes sharded weights only and final/ would be empty.
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    for key, device in (("offload_optimizer", ds.offload_optimizer), ("offload_param", ds.offload_param)):
        if device != "none":
            block: dict[str, Any] = {"device": device, "pin_memory": on_gpu}
            if device == "nvme":
                block["nvme_path"] = ds.nvme_path
            zero[key] = block
    config: dict[str, Any] = {
        "bf16": {"enabled": "auto"},
        "fp16": {
            "enabled": "auto",
            "loss_scale": 0,
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer != "none":
        # ZeRO-Offload needs DeepSpeed's own CPU Adam; the Trainer's torch optimizer is refused there.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


def load_ds_json(path: Path) -> dict[str, Any]:
    if not path.exists():  # a device, FIFO or folder exists: read_text refuses it by name
        raise UserError("config.ds_file_not_found", "deepspeed.config_file {path} not found", path=path)
    try:
        data, repeated = safe_json.loads(read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError("config.ds_bad_json", "deepspeed.config_file {path} is not valid JSON: {detail}",
                        path=path, detail=e) from None
    except safe_json.JsonProblem as e:
        raise UserError("config.ds_json_problem", "deepspeed.config_file {path}: {detail}", path=path,
                        detail=e) from None
    if not isinstance(data, dict):
        raise UserError("config.ds_not_object", "deepspeed.config_file {path} must hold a JSON object", path=path)
    if repeated:
        # DeepSpeed would silently use the last value; which one the author meant is anyone's guess.
        raise UserError("config.ds_repeated_key", "deepspeed.config_file {path}: key {key} appears more than once; "
                        "keep one", path=path, key=repr(repeated[0]))
    return data


def list_presets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESETS_DIR.glob("*.json"))}


def load_preset(name: str) -> dict[str, Any]:
    presets = list_presets()
    if name not in presets:
        raise UserError("config.unknown_preset", "unknown DeepSpeed preset {name}; choose one of {choices}",
                        name=short(name), choices=", ".join(presets))
    return load_ds_json(presets[name])


# Largest batch value accepted in a hand-written DeepSpeed JSON: micro x accumulation x ranks of any real run.
MAX_DS_BATCH = 2**31 - 1


def nvme_dir_problem(name: str, path: Any) -> Text | None:
    """Why ``path`` (the field called ``name``) cannot take DeepSpeed's NVMe swap files, or None: it must be an
    existing directory of ours that we can write, and not one of the operating system's."""
    if not isinstance(path, str) or not path.strip():
        return text("config.nvme_missing", "{name} is missing; give a directory on a fast local disk", name=name)
    p = Path(path)
    if not p.is_absolute():
        return not_absolute(name, path)
    if system_dir(path):
        return is_system_dir(name, path)
    if not p.is_dir():
        return text("config.nvme_not_dir", "{name} {path} is not an existing directory; create it first",
                    name=name, path=path)
    if p.stat().st_uid != os.getuid() or not os.access(p, os.W_OK | os.X_OK):
        return text("config.nvme_not_ours", "{name} {path} is not a directory this user owns and can write; pick or "
                    "create one that is", name=name, path=path)
    return None


def _concrete(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _enabled(block: Any) -> bool:
    return isinstance(block, dict) and block.get("enabled") is True


def _block(ds: dict[str, Any], key: str) -> dict[str, Any]:
    """A sub-dict of a hand-written config; null or a wrong type reads as empty instead of crashing the linter."""
    value = ds.get(key)
    return value if isinstance(value, dict) else {}


def _device(zero: dict[str, Any], key: str) -> str:
    """Where an offload block sends its states, lower-cased; "none" without a block. DeepSpeed accepts
    {"device": "none"} as "no offload", and templates ship it that way."""
    block = zero.get(key)
    return str(block.get("device", "none")).lower() if isinstance(block, dict) else "none"


def _offloaded(zero: dict[str, Any], key: str) -> bool:
    return _device(zero, key) != "none"


def lint_ds_config(
    ds: dict[str, Any],
    *,
    world_size: int,
    micro_batch: int | None = None,
    grad_accum: int | None = None,
    precision: str | None = None,
    gpu_supports_bf16: bool | None = None,
    device_map: Any = None,
    resolved_precision: str | None = None,
) -> list[Lint]:
    """Find DeepSpeed settings that are wrong (error) or wasteful (warning) for this run. `resolved_precision`:
    what train.precision (`auto` included) resolves to on the run's devices (hardware.resolve_precision)."""
    zero = _block(ds, "zero_optimization")
    out = (_lint_zero(zero, device_map) + _lint_precision(ds, precision, gpu_supports_bf16)
           + _lint_precision_agrees(ds, precision, resolved_precision)
           + _lint_batch(ds, world_size, micro_batch, grad_accum))
    stage = zero.get("stage", 0)
    if stage in (1, 2, 3) and world_size == 1 and not _offloaded(zero, "offload_optimizer") \
            and not _offloaded(zero, "offload_param"):
        out.append(Lint("warning", "zero-single-rank", text(
            "lint.zero_single_rank", "ZeRO stage {stage} on a single rank without offload shards nothing; it only "
            "adds overhead", stage=stage)))
    return out


# The lint id of each problem of the stage/offload rule (sections.offload_stage_problems, shared with the form).
STAGE_LINTS = {"config.offload_param_stage": "offload-param-stage",
               "config.offload_optimizer_stage": "offload-optimizer-stage"}


def _lint_zero(zero: dict[str, Any], device_map: Any) -> list[Lint]:
    """The zero_optimization block: stage, offload devices and where offload may go, saving under ZeRO-3."""
    out: list[Lint] = []
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        out.append(Lint("error", "zero-stage", text(
            "lint.zero_stage", "zero_optimization.stage must be 0, 1, 2 or 3 (got {stage})", stage=short(stage))))
    for key in ("offload_optimizer", "offload_param"):
        block = zero.get(key)
        if block is None:
            continue
        device = block.get("device", "none") if isinstance(block, dict) else None
        if device not in OFFLOAD_DEVICES:
            out.append(Lint("error", "offload-device", text(
                "lint.offload_device", "zero_optimization.{key}.device must be one of {choices} (got {device})",
                key=key, choices=", ".join(OFFLOAD_DEVICES), device=short(device))))
        elif device == "nvme":
            problem = nvme_dir_problem(f"zero_optimization.{key}.nvme_path", block.get("nvme_path"))
            if problem:
                out.append(Lint("error", "nvme-path", problem))
    problems = offload_stage_problems(stage, _device(zero, "offload_optimizer"), _device(zero, "offload_param"),
                                      "zero_optimization")
    out += [Lint("error", STAGE_LINTS[p.code], p) for p in problems]
    # DeepSpeed reads this flag under its current name, a short alias and the older fp16 name.
    if stage == 3 and not any(zero.get(k) for k in ("stage3_gather_16bit_weights_on_model_save",
                                                    "gather_16bit_weights_on_model_save",
                                                    "stage3_gather_fp16_weights_on_model_save")):
        out.append(Lint("warning", "zero3-save-gather", text(
            "lint.zero3_save_gather", "ZeRO-3 without stage3_gather_16bit_weights_on_model_save: the saved model "
            "will hold no usable weights; set it to true")))
    if stage == 3 and device_map not in (None, "", {}):
        out.append(Lint("error", "zero3-device-map", text(
            "lint.zero3_device_map", "device_map cannot be combined with ZeRO-3, which places the parameters "
            "itself; drop device_map")))
    return out


def _lint_precision(ds: dict[str, Any], precision: str | None, gpu_supports_bf16: bool | None) -> list[Lint]:
    out: list[Lint] = []
    fp16_on = _enabled(ds.get("fp16")) or (_block(ds, "fp16").get("enabled") == "auto" and precision == "fp16")
    if gpu_supports_bf16 and fp16_on:
        out.append(Lint("warning", "fp16-on-bf16-gpu", text(
            "lint.fp16_on_bf16_gpu", "fp16 with loss scaling on a GPU that supports bf16: bf16 is as fast and does "
            "not overflow")))
    if _enabled(ds.get("fp16")) and _enabled(ds.get("bf16")):
        out.append(Lint("error", "fp16-and-bf16", text("lint.fp16_and_bf16", "fp16 and bf16 are both enabled; "
                                                       "enable one")))
    if precision in ("fp16", "bf16") and _block(ds, precision).get("enabled") is False:
        out.append(Lint("error", "precision-disabled", text(
            "lint.precision_disabled", "train.precision is {precision} but the DeepSpeed config disables "
            "{precision}", precision=precision)))
    return out


def _lint_precision_agrees(ds: dict[str, Any], precision: str | None, resolved: str | None) -> list[Lint]:
    """A hand-written fp16/bf16 `enabled` that contradicts the run's precision: the HF Trainer compares the two when
    the ranks start and raises (transformers' HfTrainerDeepSpeedConfig.fill_match), so refuse it before launch."""
    if resolved is None or (_enabled(ds.get("fp16")) and _enabled(ds.get("bf16"))):
        return []  # both enabled: fp16-and-bf16 says so
    out: list[Lint] = []
    for key in ("fp16", "bf16"):
        enabled = _block(ds, key).get("enabled")
        if enabled is False and key == precision:
            continue  # precision-disabled says so
        if isinstance(enabled, bool) and enabled != (resolved == key):
            out.append(Lint("error", "precision-contradicts", text(
                "lint.precision_contradicts", "the DeepSpeed config sets {key}.enabled to {value} but train.precision "
                "{precision} is {resolved} on this run's devices; set {key}.enabled to \"auto\" or "
                "train.precision to match", key=key, value=str(enabled).lower(), precision=precision,
                resolved=resolved)))
    return out


def _lint_batch(ds: dict[str, Any], world_size: int, micro_batch: int | None, grad_accum: int | None) -> list[Lint]:
    """Batch arithmetic: train_batch_size = micro * accumulation * world_size must hold for concrete values."""
    out: list[Lint] = []
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        value = ds.get(key)
        if value is not None and value != "auto" and (_concrete(value) is None or not 1 <= value <= MAX_DS_BATCH):
            out.append(Lint("error", "batch-value", text(
                "lint.batch_value", "{key} must be an integer from 1 to {hi} or \"auto\" (got {value})",
                key=key, hi=f"{MAX_DS_BATCH:,}", value=short(value))))
    tbs = _concrete(ds.get("train_batch_size"))
    mb = _concrete(ds.get("train_micro_batch_size_per_gpu")) or micro_batch
    ga = _concrete(ds.get("gradient_accumulation_steps")) or grad_accum
    tbs, mb, ga = (v if v is None or 1 <= v <= MAX_DS_BATCH else None for v in (tbs, mb, ga))
    if tbs is not None and mb and ga and tbs != mb * ga * world_size:
        out.append(Lint("error", "batch-arithmetic", text(
            "lint.batch_arithmetic", "train_batch_size {total} != micro batch {micro} x accumulation {accum} x "
            "{ranks} ranks = {product}; set it to \"auto\"", total=tbs, micro=mb, accum=ga, ranks=world_size,
            product=mb * ga * world_size)))
    if tbs is not None and mb and ga is None and tbs % (mb * world_size):
        out.append(Lint("error", "batch-arithmetic", text(
            "lint.batch_not_divisible", "train_batch_size {total} is not divisible by micro batch {micro} x {ranks} "
            "ranks", total=tbs, micro=mb, ranks=world_size)))
    return out


# DeepSpeed's bucket size in elements where a config leaves it out (deepspeed/runtime/zero/config.py).
DS_BUCKET_DEFAULT = 500_000_000


@dataclass(frozen=True)
class ZeroLayout:
    """What a DeepSpeed config's zero_optimization block does. This module is the only reader of that block: the
    memory planner, preflight (which writes it into the run's config.yaml, read by the trainer's log line) and the
    Train form's presets ask `zero_layout`, given the dict that runs, since a hand-written deepspeed.config_file may
    differ from the form's fields."""

    stage: int
    """ZeRO stage 0-3."""

    offload_optimizer: str
    """Where optimizer states live: none, cpu or nvme."""

    offload_param: str
    """Where parameters live between uses: none, cpu or nvme."""

    nvme_path: str = ""
    """The swap directory of the first block offloaded to nvme ("" when none is)."""

    reduce_bucket_size: int | None = DS_BUCKET_DEFAULT
    """Gradient reduce bucket in elements; None for "auto" (the HF Trainer fills it in at launch)."""

    prefetch_bucket_size: int | None = DS_BUCKET_DEFAULT
    """ZeRO-3's parameter prefetch bucket (stage3_prefetch_bucket_size) in elements; None for "auto"."""

    overlap_comm: bool = False
    """A second reduce bucket overlaps communication with the backward pass (DeepSpeed's default is off below
    stage 3)."""


def _bucket(zero: dict[str, Any], key: str) -> int | None:
    """A bucket size in elements: DeepSpeed's default when absent, None for "auto". A value DeepSpeed would not take
    reads as the default: the linter does not check bucket sizes, and a plan with the default is still a plan."""
    value = zero.get(key, DS_BUCKET_DEFAULT)
    if value == "auto":
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return DS_BUCKET_DEFAULT


def zero_layout(ds: dict[str, Any]) -> ZeroLayout:
    """The ZeRO layout of a DeepSpeed config (ours or hand-written); what the linter calls an error is refused."""
    zero = _block(ds, "zero_optimization")
    stage = zero.get("stage", 0)
    devices = [_device(zero, key) for key in ("offload_optimizer", "offload_param")]
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool) or not set(devices) <= set(OFFLOAD_DEVICES):
        raise UserError("config.bad_zero_block", "zero_optimization in the DeepSpeed config is not valid (stage "
                        "{stage}, offload devices {devices}); fix what the DeepSpeed lint reports first",
                        stage=short(stage), devices=", ".join(devices))
    nvme = [_block(zero, key).get("nvme_path") for key, device in zip(("offload_optimizer", "offload_param"), devices)
            if device == "nvme"]
    return ZeroLayout(int(stage), *devices, nvme_path=str(nvme[0]) if nvme and nvme[0] else "",
                      reduce_bucket_size=_bucket(zero, "reduce_bucket_size"),
                      prefetch_bucket_size=_bucket(zero, "stage3_prefetch_bucket_size"),
                      overlap_comm=zero.get("overlap_comm", False) is True)


def lint_run(cfg: RunConfig, ds: dict[str, Any], *, gpu_supports_bf16: bool | None = None,
             resolved_precision: str | None = None) -> list[Lint]:
    return lint_ds_config(
        ds,
        world_size=cfg.world_size,
        micro_batch=cfg.train.micro_batch_size,
        grad_accum=cfg.train.gradient_accumulation,
        precision=cfg.train.precision,
        gpu_supports_bf16=gpu_supports_bf16,
        resolved_precision=resolved_precision,
    )


def write_json(ds: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(ds, indent=2) + "\n", encoding="utf-8")
