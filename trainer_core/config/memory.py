"""Memory planner: per-rank accelerator memory and host RAM for a run, from the model's config alone.

On GPUs, model states come from DeepSpeed's own estimators (ZeRO-2/3; stages 0/1 by the same arithmetic); on CPU
ranks from bytes per parameter measured by bench/memory_bench.py. Activations and the vocabulary head's memory come
from the batch shape. The model is instantiated on the meta device, so a 7B model answers in about a second
without touching its weights. On a CPU-only machine every rank's "accelerator" memory is its resident memory.

LoRA and QLoRA (train.method lora|qlora): the base is frozen, so it holds only its weights (16 or 32 bit; QLoRA's
block linears in 4 bit), and gradients, fp32 master weights and Adam's moments exist for the adapter's parameters
alone, sharded by ZeRO as a full fine-tune's are. The adapter is counted from the same targets training finds
(config/lora_targets.py) on the meta model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from trainer_core.config.ds_config import ZeroLayout, build_ds_config, zero_layout
from trainer_core.config.hardware import Hardware, detect, resolve_precision, run_gpus
from trainer_core.config.head_loss import workspace_bytes
from trainer_core.config.run_config import RunConfig
from trainer_core.common.errors import Text, UserError, text

if TYPE_CHECKING:
    from trainer_core.config.lora_targets import AdapterShape

GiB = 1024**3
MiB = 1024**2
# CPU ranks, measured with bench/memory_bench.py (peak RSS of 3-step runs of a 10M and a 100M Qwen2 with a 152k
# vocabulary, ZeRO 0-3 with and without offload, 1 and 2 ranks; README, Performance).
# A rank's resident memory before any model state: interpreter, torch, transformers, DeepSpeed, tokenizer, data.
CPU_RANK_BASELINE = 600 * MiB
# CPU ranks train in fp32. Model-state bytes per parameter at the peak, as (held by every rank, divided over the
# ranks), by (ZeRO stage, optimizer offloaded).
CPU_STATE_BYTES = {
    (0, False): (16, 0),  # weights, gradients and Adam's two moments, all whole on every rank
    # The fp32 partition (master weights, Adam moments, reduced gradients, buckets) is sharded; the module's own
    # weights stay whole.
    (1, False): (5, 18), (2, False): (5, 18),
    (1, True): (10.5, 25.5), (2, True): (10.5, 25.5),  # DeepSpeed's CPU optimizer adds copies and bounce buffers
    # Every rank loads the whole model before ZeRO-3 partitions it, and a peak keeps that.
    (3, False): (12, 12), (3, True): (9, 22),
}
# GPU ranks: what each rank holds besides model states and activations.
# The CUDA context (kernels, cuBLAS/cuDNN workspaces) a rank holds before its first tensor. transformers' "Model
# training anatomy" guide measured 1.3 GB with every kernel loaded at start; with CUDA's lazy module loading
# (CUDA_MODULE_LOADING=LAZY, PyTorch's default since CUDA 11.7) it is a few hundred MiB: 0.5 GiB per rank.
CUDA_CONTEXT_BYTES = 512 * MiB
# NCCL's buffers in a run of several ranks: NCCL_BUFFSIZE (4 MiB by default, NCCL's environment-variable docs) per
# channel, peer and direction, over a handful of channels; a rough figure.
NCCL_BYTES = 256 * MiB
# Share of the sequence that carries labels in role-play data (answers are short); used for the head's estimate.
LABEL_FRACTION = 0.5
# QLoRA's 4-bit NF4 weight per parameter: half a byte, plus the quantisation constants of double quantisation (an
# 8-bit absmax per block of 64 weights and an fp32 constant per 256 of those: 0.127 bits per parameter, the QLoRA
# paper, section 3).
NF4_BYTES = 0.5 + 0.127 / 8
# QLoRA's parameters outside the 4-bit linears (embeddings, norms, head): peft's prepare_model_for_kbit_training
# casts every 16-bit parameter that is not 4-bit to fp32.
QLORA_OTHER_BYTES = 4


@dataclass
class ModelShape:
    params: int
    largest_layer_params: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    adapter: AdapterShape | None = None
    """The LoRA adapter of the run's lora section on this model (None: planned without one)."""


@dataclass
class MemoryPlan:
    params: int
    per_rank_device_bytes: int
    """Peak per rank on the accelerator (CPU: resident memory of the rank)."""
    host_bytes: int
    """Host RAM for the whole node (offloaded states, CPU ranks)."""
    breakdown: dict[str, int] = field(default_factory=dict)
    device_total_bytes: int | None = None
    host_total_bytes: int = 0
    fits: bool = True
    notes: list[Text] = field(default_factory=list)
    """What to keep in mind reading the figures; the dashboard shows them in the tab's language."""
    on_gpu: bool = False
    method: str = "full"
    """train.method the plan is for."""
    trainable: int | None = None
    """Parameters that train (the adapter's, for lora/qlora); None for a full fine-tune (all of them)."""

    def to_dict(self) -> dict:
        """Plain data for JSON (`cli plan --json`): the notes as English sentences."""
        return {**asdict(self), "notes": [str(n) for n in self.notes]}


def model_shape(model_dir: str | Path, *, trust_remote_code: bool = False, lora=None) -> ModelShape:
    """Exact parameter counts from config.json by building the model on the meta device; with `lora` (the run
    config's lora section) also the adapter it would put on that model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainer_core.config.lora_targets import adapter_shape  # torch: imported when a shape is asked for

    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise UserError("config.model_config_unreadable", "model.path {path}: cannot read its config ({detail})",
                        path=model_dir, detail=str(e).splitlines()[0]) from None
    # torch's device context is thread-local. accelerate's init_empty_weights patches nn.Module for the whole
    # process: the dashboard plans in several sessions' threads at once, and two overlapping patches restore each
    # other's copy, leaving every model built afterwards in that process (chat included) without data.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code,
                                                 dtype=torch.float32)
    model.tie_weights()  # an untied model would count the embedding twice
    params = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())

    def get(*names, default=0):
        for n in names:
            v = getattr(config, n, None)
            if v:
                return int(v)
        return default

    hidden = get("hidden_size", "n_embd", "d_model")
    return ModelShape(
        params=params,
        largest_layer_params=largest,
        hidden=hidden,
        layers=get("num_hidden_layers", "n_layer", "num_layers"),
        heads=get("num_attention_heads", "n_head"),
        intermediate=get("intermediate_size", "ffn_hidden_size", default=4 * hidden),
        vocab=get("vocab_size"),
        adapter=adapter_shape(model, lora) if lora is not None else None,
    )


def _model_states(shape: ModelShape, zero: ZeroLayout, ranks_per_node: int, nodes: int, half: bool) -> tuple[int, int]:
    """(device bytes per rank, host bytes per node) for parameters, gradients and optimizer states."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p = shape.params
    world = ranks_per_node * nodes
    off_opt = zero.offload_optimizer != "none"
    off_param = zero.offload_param != "none"
    if zero.stage == 3 and off_param and not off_opt:
        dev, host = _offload_param_only(shape, ranks_per_node, nodes)
    elif zero.stage == 3:
        host, dev, _ = estimate_zero3_model_states_mem_needs(
            p, shape.largest_layer_params, num_gpus_per_node=ranks_per_node, num_nodes=nodes,
            cpu_offload=off_opt, cpu_offload_params=off_param, zero_init=True, additional_buffer_factor=1.5)
    else:
        # Stages 0 and 1 by ZeRO-2's arithmetic, so the stages compare on the same byte counts. Host memory is the
        # same for all three: every rank loads the model on the host first, and offloaded states live there.
        host, dev = estimate_zero2_model_states_mem_needs(
            p, num_gpus_per_node=ranks_per_node, num_nodes=nodes, cpu_offload=off_opt, additional_buffer_factor=1.5)
        if zero.stage == 1:
            dev += 2 * p - int(2 * p / world)  # 16-bit gradients are not partitioned
        elif zero.stage == 0:
            dev = estimate_zero2_model_states_mem_needs(p, cpu_offload=False)[1]  # as one rank: nothing partitioned
    if not half:
        # DeepSpeed's estimators assume 16-bit params and grads; fp32 training holds both in 4 bytes.
        extra = {0: 4 * p, 1: 4 * p, 2: 2 * p + 2 * p // world, 3: 4 * p // world}[zero.stage]
        dev += extra
    if zero.offload_optimizer == "nvme" or zero.offload_param == "nvme":
        host = host // 4  # states stream from disk; pinned buffers remain
    return int(dev), int(host)


def _offload_param_only(shape: ModelShape, ranks_per_node: int, nodes: int) -> tuple[int, int]:
    """ZeRO-3 with offload_param but no offload_optimizer, which DeepSpeed's estimator does not model (it reads
    cpu_offload_params only under cpu_offload). The 16-bit parameter partitions live on the host; the optimizer's
    fp32 weights, Adam moments and fp32 gradients stay on the device, partitioned (16 bytes per parameter over the
    ranks), with the largest layer gathered whole as in the estimator."""
    p, world = shape.params, ranks_per_node * nodes
    dev = 4 * shape.largest_layer_params + int(16 * p / world)
    host = int((2 * p / nodes + 4 * shape.largest_layer_params * ranks_per_node) * 1.5)  # the estimator's 1.5 buffer
    return dev, host


def _elements(size: int | None, auto: int, params: int) -> int:
    """A bucket size of the ZeRO layout in elements: what the HF Trainer fills for "auto" (None); never more than
    the model has."""
    return min(auto if size is None else size, params)


def zero_buffers(zero: ZeroLayout, shape: ModelShape, half: bool) -> int:
    """Bytes per rank of ZeRO's gradient buckets and ZeRO-3's prefetched parameters (DeepSpeed 0.19 sources).
    "auto" sizes are what transformers' DeepSpeed integration fills: reduce_bucket_size hidden², the ZeRO-3
    prefetch bucket 0.9 hidden²."""
    if zero.stage == 0:
        return 0
    size = 2 if half else 4
    hidden2 = shape.hidden * shape.hidden
    reduce = _elements(zero.reduce_bucket_size, hidden2, shape.params)
    if zero.stage in (1, 2):
        # stage_1_and_2.setup_buckets: one reduce bucket, and a second with overlap_comm (DeepSpeed's default is off
        # below stage 3). The all-gather of updated weights (allgather_bucket_size) gathers into the weights' own
        # flat buffer (runtime/utils.all_gather_dp_groups), so it allocates no bucket of its own.
        return (2 if zero.overlap_comm else 1) * reduce * size
    prefetch = _elements(zero.prefetch_bucket_size, int(0.9 * hidden2), shape.params)
    return reduce * size + prefetch * size  # stage3.py: one reduce bucket; parameters fetched ahead, in 16-bit


def _activations(shape: ModelShape, cfg: RunConfig, stage: int, half: bool, on_gpu: bool) -> tuple[int, int]:
    """(activation bytes, vocabulary-head bytes) for one micro-batch on one rank."""
    b, s = cfg.train.micro_batch_size, cfg.data.max_length
    d = 2 if half else 4
    per_layer = b * s * (10 * shape.hidden + 3 * shape.intermediate) * d + b * shape.heads * s * 4
    if shape.adapter is not None and cfg.train.method != "full":
        # Each adapted layer keeps its dropped-out input and its rank-r activation for backward.
        adapter = shape.adapter
        per_layer += b * s * (adapter.inputs_per_token + adapter.ranks_per_token) * d // max(shape.layers, 1)
    if cfg.train.gradient_checkpointing:
        acts = shape.layers * b * s * shape.hidden * d + per_layer
    else:
        acts = shape.layers * per_layer
    labelled = int(b * s * LABEL_FRACTION)
    if stage == 3:
        # ZeRO-3 partitions the head's weight, so the loss asks the model for logits at the positions where any row
        # of the micro-batch has a label (one set of positions for every row): with b rows that union covers about
        # 1 - (1 - f)^b of the sequence. Three fp32 copies of those logits at the backward peak: the log-softmax
        # kept for backward, its incoming gradient and the gradient of the logits.
        kept = int(b * s * (1 - (1 - LABEL_FRACTION) ** b))
        head = kept * shape.vocab * 4 * 3
    else:
        # The blockwise head loss (linear_ce) never holds the logits: its workspace, plus the embedding's dense
        # gradient, which autograd adds to the head's when the two are tied.
        head = workspace_bytes(labelled, shape.vocab, shape.hidden, d, on_gpu)
        if cfg.train.method == "full":
            head += shape.vocab * shape.hidden * d  # a frozen embedding (lora, qlora) gets no gradient
    return int(acts), int(head)


def _cpu_model_states(shape: ModelShape, zero: ZeroLayout, world_size: int) -> int:
    """Bytes per CPU rank for weights, gradients and optimizer states (measured, see CPU_STATE_BYTES)."""
    offload = zero.offload_optimizer != "none" or zero.offload_param != "none"
    whole, sharded = CPU_STATE_BYTES[(zero.stage, offload and zero.stage > 0)]
    return int(shape.params * (whole + sharded / world_size))


def _frozen_base(shape: ModelShape, method: str, half: bool, stage: int, world: int) -> int:
    """Bytes per rank of an adapter run's frozen base weights (no gradients, no optimizer states)."""
    if method == "qlora":
        quantised = shape.adapter.quantisable
        whole = quantised * NF4_BYTES + (shape.params - quantised) * QLORA_OTHER_BYTES
    else:
        whole = shape.params * (2 if half else 4)
    if stage == 3:
        # ZeRO-3 partitions frozen parameters as well, and gathers one layer whole at a time.
        per_param = whole / shape.params
        return int(whole / world + shape.largest_layer_params * per_param)
    return int(whole)


def _adapter_only(shape: ModelShape) -> ModelShape:
    """The shape ZeRO's optimizer sees in an adapter run: only the adapter's parameters train."""
    return replace(shape, params=max(shape.adapter.trainable, 1),
                   largest_layer_params=max(shape.adapter.largest_trainable, 1))


def plan_memory(cfg: RunConfig, shape: ModelShape | None = None, hw: Hardware | None = None,
                ds: dict | None = None) -> MemoryPlan:
    """Peak memory per rank and per node for `cfg`, with ZeRO stage and offload read from `ds`, the DeepSpeed config
    that runs (None: the one `build_ds_config` gives, which is deepspeed.config_file when that is set)."""
    hw = hw or detect()
    ds = ds if ds is not None else build_ds_config(cfg, on_gpu=hw.has_gpu)
    zero = zero_layout(ds)
    method = cfg.train.method
    adapter = method != "full"
    shape = shape or model_shape(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code,
                                 lora=cfg.lora if adapter else None)
    if adapter and shape.adapter is None:
        raise ValueError("an adapter plan needs a ModelShape with its adapter (model_shape(..., lora=cfg.lora))")
    gpus = run_gpus(hw, cfg.placement) or hw.gpus  # the run's GPUs (all of them when it asks for missing ones)
    precision = resolve_precision(cfg.train.precision, gpus)
    half = precision in ("bf16", "fp16")
    ranks, nodes = cfg.placement.num_ranks, cfg.placement.num_nodes
    acts, logits = _activations(shape, cfg, zero.stage, half, hw.has_gpu)
    notes = []
    if hw.has_gpu:
        trained = _adapter_only(shape) if adapter else shape
        dev_states, host_states = _model_states(trained, zero, ranks, nodes, half)
        if adapter:
            base = _frozen_base(shape, method, half, zero.stage, cfg.world_size)
            states = {"frozen_base": base, "adapter_states": dev_states}
            if method == "lora":
                # Each rank loads the base on the host before DeepSpeed moves it (ZeRO-3's zero.Init: one layer at
                # a time), with the estimators' 1.5 buffer factor; QLoRA loads straight onto the GPU in 4 bit.
                loaded = base if zero.stage < 3 else shape.largest_layer_params * (2 if half else 4)
                host_states += int(ranks * loaded * 1.5)
            notes.append(text("config.plan_adapter_gpu_unverified", "{method} on GPUs: estimates, unverified "
                              "until a GPU run confirms them", method=method))
        else:
            states = {"model_states": dev_states}
        breakdown = {**states, "activations": acts, "logits": logits,
                     "zero_buffers": zero_buffers(zero, trained, half), "cuda_context": CUDA_CONTEXT_BYTES,
                     "nccl": NCCL_BYTES if cfg.world_size > 1 else 0}
        per_rank = sum(breakdown.values())
        host = host_states + ranks * int(1.5 * GiB)  # each rank's process on the host
        device_total = min(g.total_bytes for g in gpus)
        fits = per_rank <= 0.95 * device_total and host <= hw.host_ram_bytes
    else:
        # CPU ranks: "device" memory is the rank's RSS, and all ranks share the host.
        if adapter:
            # fp32 on CPU; every rank keeps the whole loaded base (as a full fine-tune's ZeRO-3 peak does); the
            # adapter's states by the measured bytes per trained parameter.
            states = {"frozen_base": 4 * shape.params,
                      "adapter_states": _cpu_model_states(_adapter_only(shape), zero, cfg.world_size)}
        else:
            states = {"model_states": _cpu_model_states(shape, zero, cfg.world_size)}
        breakdown = {**states, "activations": acts, "logits": logits, "process_baseline": CPU_RANK_BASELINE}
        per_rank = sum(breakdown.values())
        host = per_rank * ranks
        device_total = None
        fits = host <= 0.9 * hw.host_ram_bytes
        notes.append(text("config.plan_cpu_ranks", "no GPU here: figures are each CPU rank's resident memory"))
    if precision == "fp32" and hw.has_gpu:
        notes.append(text("config.plan_fp32_on_gpu",
                          "fp32 on a GPU doubles parameter and gradient memory; use auto precision"))
    return MemoryPlan(params=shape.params, per_rank_device_bytes=int(per_rank), host_bytes=int(host),
                      breakdown=breakdown, device_total_bytes=device_total, host_total_bytes=hw.host_ram_bytes,
                      fits=fits, notes=notes, on_gpu=hw.has_gpu, method=method,
                      trainable=shape.adapter.trainable if adapter else None)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
