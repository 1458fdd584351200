"""Every check a run must pass before anything is written or started (orchestrate.plan runs them)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from trainer_core.common import paths
from trainer_core.common.lint import Lint
from trainer_core.config.ds_config import build_ds_config, lint_run, zero_layout
from trainer_core.config.hardware import VISIBLE_ENV, Hardware, bf16_everywhere, resolve_precision, run_gpus
from trainer_core.config.run_config import RunConfig
from trainer_core.common.errors import UserError, text
from trainer_core.models.adapters import bitsandbytes_installed, method_problem, uses_adapter
from trainer_core.models.local import check_model_dir
from trainer_core.models.qwen1_import import lint_imported_length
from trainer_core.runs.launch import hostfile_text


def resolve_paths(cfg: RunConfig) -> RunConfig:
    """Absolute model, data and DeepSpeed-file paths, so the run does not depend on the directory it is launched
    from."""
    ds_file = cfg.deepspeed.config_file
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, path=str(paths.resolve(cfg.model.path))),
        data=dataclasses.replace(cfg.data, path=str(paths.resolve(cfg.data.path))),
        deepspeed=dataclasses.replace(cfg.deepspeed, config_file=str(paths.resolve(ds_file)) if ds_file else ""),
    )


def with_zero_of(cfg: RunConfig, ds: dict[str, Any]) -> RunConfig:
    """The config with its ZeRO stage and offloads as the DeepSpeed dict that runs has them, so the memory plan,
    the saved config.yaml and the trainer's log line describe a hand-written `deepspeed.config_file`, not the
    form's fields. Call after the dict's lints passed (they refuse values the config could not hold)."""
    if not cfg.deepspeed.config_file:
        return cfg
    zero = zero_layout(ds)
    return dataclasses.replace(cfg, deepspeed=dataclasses.replace(
        cfg.deepspeed, stage=zero.stage, offload_optimizer=zero.offload_optimizer, offload_param=zero.offload_param,
        nvme_path=zero.nvme_path or cfg.deepspeed.nvme_path))


def _file_stamp(path: Path) -> tuple:
    """(path, size, modification time in ns, inode) as the file is now; (path, None) when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return str(path), None
    return str(path), st.st_size, st.st_mtime_ns, st.st_ino


def input_stamp(cfg: RunConfig) -> tuple:
    """The files the checks read, as they are now: the data's files, the model folder's files, a DeepSpeed file and a
    hostfile given by path. `cfg` has resolved paths. A plan keeps the stamp taken before its checks read anything;
    a launch that finds another one knows the plan may no longer hold (orchestrate.still_holds)."""
    from trainer_core.data.dataset import source_files

    try:
        data = tuple(_file_stamp(f) for f in source_files(cfg.data.path))
    except (OSError, UserError):
        data = (_file_stamp(Path(cfg.data.path)),)  # the checks say what is wrong with it
    model = Path(cfg.model.path)
    try:
        model_files = tuple(_file_stamp(f) for f in sorted(model.iterdir()))
    except OSError:
        model_files = (_file_stamp(model),)
    ds_file = (_file_stamp(Path(cfg.deepspeed.config_file)),) if cfg.deepspeed.config_file else ()
    spec = cfg.placement.hostfile.strip()
    hostfile = (_file_stamp(paths.resolve(spec)),) if cfg.placement.launcher != "local" and spec and \
        "slots=" not in spec else ()
    return data, model_files, ds_file, hostfile


def check_placement(cfg: RunConfig, hw: Hardware) -> None:
    """The ranks asked for exist on this machine (local runs), and a multi-node hostfile is well formed. GPU ids
    count within CUDA_VISIBLE_DEVICES (hardware's module docstring)."""
    p = cfg.placement
    if hw.gpu_problem is not None and p.launcher == "local":
        # GPUs are there but cannot be used as asked (a CPU-only torch, unmappable CUDA_VISIBLE_DEVICES): say so
        # rather than start CPU ranks, or the wrong GPUs, on a GPU machine.
        raise UserError("runs.gpu_unusable", "{problem}", problem=hw.gpu_problem)
    if hw.has_gpu and p.launcher == "local":
        missing = [g for g in (p.gpus or list(range(p.num_ranks))) if g >= len(hw.gpus)]
        if missing:
            visible = os.environ.get(VISIBLE_ENV)
            if visible is not None:
                raise UserError("runs.gpus_missing_visible", "placement.gpus asks for GPU {missing} but {env}={value} "
                                "shows {n} GPUs; placement.gpus counts from 0 within them", missing=missing,
                                env=VISIBLE_ENV, value=visible, n=len(hw.gpus))
            raise UserError("runs.gpus_missing", "placement.gpus asks for GPU {missing} but this machine has {n} GPUs",
                            missing=missing, n=len(hw.gpus))
    elif p.launcher == "local" and p.num_ranks > hw.cpu_cores:
        # Each CPU rank runs its own torch threads; more ranks than cores only thrash (1024 would fork-bomb).
        raise UserError("runs.too_many_cpu_ranks",
                        "placement.num_ranks {n} is more than this machine's {cores} CPU cores and it has no GPU; "
                        "use at most {cores}", n=p.num_ranks, cores=hw.cpu_cores)
    if p.launcher != "local":
        hostfile_text(cfg)


def check_files(cfg: RunConfig) -> int:
    """The model and the data are there and the data trains; returns the number of usable records."""
    from trainer_core.data.dataset import check_data_path

    check_model_dir(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    try:
        check_data_path(cfg.data.path)  # the same check as check-data's, before anything reads the file
    except UserError as e:
        if e.code == "data.file_not_found":  # the Train form's words: where a dataset comes from
            raise UserError("runs.data_not_found", "data.path {path} not found: upload a dataset or pick the "
                            "sample", path=cfg.data.path) from None
        raise UserError("runs.data_path", "data.path {problem}", problem=e.text) from None
    return check_answers_fit(cfg)


def lints(cfg: RunConfig, ds: dict[str, Any], hw: Hardware) -> list[Lint]:
    """Every lint of the run; errors refuse it, naming each problem."""
    gpus = run_gpus(hw, cfg.placement)
    found = lint_run(cfg, ds, gpu_supports_bf16=bf16_everywhere(gpus),
                     resolved_precision=resolve_precision(cfg.train.precision, gpus))
    found += lint_learning_rate(cfg)
    found += lint_persona(cfg)
    found += lint_imported_length(cfg.model.path, cfg.data.max_length)
    errors = [text("runs.lint_error", "error: {message} [{lint}]", message=x.message, lint=x.code)
              for x in found if x.level == "error"]
    if errors:
        problems = errors[-1]
        for e in reversed(errors[:-1]):  # one sentence, each part in the reader's language
            problems = text("runs.problems_joined", "{first}; {rest}", first=e, rest=problems)
        raise UserError("runs.ds_config_problems", "DeepSpeed config problems: {problems}", problems=problems)
    return found


def deepspeed_dict(cfg: RunConfig, hw: Hardware) -> dict[str, Any]:
    """The DeepSpeed config the ranks will run: the file's when `deepspeed.config_file` is set."""
    return build_ds_config(cfg, on_gpu=hw.has_gpu)


# Highest learning rate that full fine-tuning of a model of at least this many parameters usually tolerates. The form
# starts from the starter model's quickstart (lr 8e-3, right for a random 10M model), and a user who only switches
# the model to a pretrained 7B would erase what it knows; published full fine-tuning recipes for 7B chat models use
# 1e-5 to 2e-5 (Qwen's finetune_ds.sh, LLaMA-Factory's full-SFT examples).
LR_LIMITS = ((1e9, 1e-4), (1e8, 1e-3))


def lint_learning_rate(cfg: RunConfig) -> list[Lint]:
    """A warning when train.learning_rate is far above what a model of this size is fine-tuned with."""
    from trainer_core.config.memory import model_shape

    try:
        params = model_shape(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code).params
    except UserError:
        return []  # the memory plan reports what is wrong with the model's config
    if uses_adapter(cfg.train.method):
        return lint_adapter_learning_rate(cfg, params)
    limit = next((lr for size, lr in LR_LIMITS if params >= size), None)
    if limit is None or cfg.train.learning_rate <= limit:
        return []
    return [Lint("warning", "learning-rate-high", text(
        "runs.learning_rate_high",
        "train.learning_rate {lr:g} is far above what full fine-tuning of a {billions:.1f}B-parameter model "
        "tolerates (usually 1e-5 to 2e-5; above {limit:g} it tends to erase what the model already knows); "
        "configs/qwen_7b_4x24gb.yaml uses 1e-5", lr=cfg.train.learning_rate, billions=params / 1e9, limit=limit))]


# LoRA recipes (PEFT's and Qwen's examples, LLaMA-Factory, ms-swift) train adapters at 1e-4 to 2e-4; a rate ten times
# off either way barely moves the adapters or makes them diverge. Models below LORA_LR_MIN_PARAMS (the starter, a
# random 10M model) keep their own rates.
LORA_LR_RANGE = (1e-5, 2e-3)
LORA_LR_MIN_PARAMS = 1e8


def lint_adapter_learning_rate(cfg: RunConfig, params: int) -> list[Lint]:
    lo, hi = LORA_LR_RANGE
    if params < LORA_LR_MIN_PARAMS or lo <= cfg.train.learning_rate <= hi:
        return []
    return [Lint("warning", "learning-rate-lora", text(
        "runs.learning_rate_lora", "train.learning_rate {lr:g} is far from what {method} adapters of a "
        "{billions:.1f}B-parameter model train with (usually 1e-4 to 2e-4; below {lo:g} they barely move, above "
        "{hi:g} they tend to diverge)", lr=cfg.train.learning_rate, method=cfg.train.method, billions=params / 1e9,
        lo=lo, hi=hi))]


def check_method(cfg: RunConfig, hw: Hardware) -> None:
    """train.method can run on this machine (qlora needs a CUDA GPU): refused before anything is read or started."""
    problem = method_problem(cfg.train.method, cfg.placement.launcher, hw.has_gpu and hw.gpu_problem is None,
                             bitsandbytes_installed())
    if problem is not None:
        raise problem


def check_precision(cfg: RunConfig, hw: Hardware) -> None:
    """fp16 needs a CUDA GPU: DeepSpeed's CPU accelerator has no fp16 ("Type fp16 is not supported on your
    device" minutes into the start). bf16 and fp32 train on CPU ranks."""
    if cfg.train.precision == "fp16" and cfg.placement.launcher == "local" and not hw.has_gpu:
        raise UserError("runs.fp16_needs_gpu", "train.precision fp16 needs a CUDA GPU and this machine has none; "
                        "use bf16 (fast on CPUs with AVX-512-BF16 or AMX) or fp32")


def lint_persona(cfg: RunConfig) -> list[Lint]:
    """A warning when data.persona is empty: records without their own system turn then train with none."""
    if cfg.data.persona.strip():
        return []
    return [Lint("warning", "persona-empty", text(
        "runs.persona_empty", "data.persona is empty: records without their own system turn train with no system "
        "turn, so the model learns no role to play; ignore this only if that is intended"))]


def check_answers_fit(cfg: RunConfig) -> int:
    """Encode the dataset as training will (into the cache the trainer then reads) and refuse a run without a
    usable record, or in which no record keeps an answer token after truncation (it would fail after start-up).
    Returns the number of usable records."""
    from trainer_core.data.encoded_set import encode_file
    from trainer_core.models.local import load_tokenizer

    tok = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    enc = encode_file(cfg.data.path, tok, persona=cfg.data.persona, max_length=cfg.data.max_length)
    if len(enc) == 0:
        if enc.first_error:
            raise UserError("runs.no_usable_records_first", "data.path {path} has no usable records; first "
                            "problem: {problem}", path=cfg.data.path, problem=enc.first_error)
        raise UserError("runs.no_usable_records", "data.path {path} has no usable records", path=cfg.data.path)
    if not enc.n_labels.any():
        raise UserError("runs.answers_cut_off",
                        "data.max_length {max_length} cuts off every answer (prompts reach {longest} tokens with "
                        "the persona); raise data.max_length or shorten data.persona",
                        max_length=cfg.data.max_length, longest=int(enc.lengths.max()))
    return len(enc)
