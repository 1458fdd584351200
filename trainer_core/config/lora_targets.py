"""Which layers of a model get LoRA adapters, and what those adapters hold, from the model's modules alone.

Works the same on a loaded model (training wraps it through models/adapters.py) and on one built on the meta
device from config.json (the memory planner counts the adapter's parameters without loading any weight).

Targets are every linear layer inside the model's repeated decoder blocks (the largest `ModuleList` of same-class
modules), never the output head or the embeddings, which sit outside the blocks. They are named by their leaf names
(q_proj, up_proj, ...), the form PEFT, vLLM and other tools read, unless a linear layer outside the blocks shares a
leaf name; then by full names, so nothing outside the blocks is adapted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer_core.common.errors import UserError


def linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2-style models' linear layer

    return (torch.nn.Linear, Conv1D)


def block_list(model: torch.nn.Module) -> str:
    """The qualified name of the model's decoder blocks: the ModuleList with the most children that are all of
    one class (model.layers for Llama/Qwen2, transformer.h for GPT-2 and Qwen-1)."""
    best, size = None, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > size \
                and len({type(m) for m in module}) == 1:
            best, size = name, len(module)
    if best is None:
        raise UserError("models.lora_no_blocks", "the model has no list of repeated blocks to put LoRA adapters "
                        "in; name the layers in lora.target_modules")
    return best


def target_modules(model: torch.nn.Module, chosen: list[str]) -> list[str]:
    """The adapter targets: `chosen` (lora.target_modules) when given, else every linear layer in the blocks."""
    if chosen:
        return list(chosen)
    blocks = block_list(model)
    linear = linear_types()
    inside, outside = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, linear):
            continue
        if name.startswith(blocks + "."):
            inside.append(name)
        else:
            outside.add(name.rpartition(".")[2])
    if not inside:
        raise UserError("models.lora_no_linear", "the model's blocks ({blocks}) hold no linear layer to put LoRA "
                        "adapters on; name the layers in lora.target_modules", blocks=blocks)
    leaves = sorted({n.rpartition(".")[2] for n in inside})
    if outside.intersection(leaves):
        return inside  # a head or projection outside the blocks shares a leaf name: name each layer in full
    return leaves


def _matches(name: str, targets: list[str]) -> bool:
    """PEFT's rule for a list of target names: the module's full name, or its name ending in "." + target."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _in_out(module: torch.nn.Module) -> tuple[int, int] | None:
    """(input features, output features) of a layer PEFT's LoRA adapts, or None."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]  # Conv1D stores its weight as (in, out)
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim  # lora_A is r x vocabulary, lora_B dim x r
    return None


@dataclass
class AdapterShape:
    """What LoRA adds to a model and what of the base it leaves frozen, counted from the modules' shapes."""

    trainable: int
    """Parameters that train: rank x (in + out) per targeted layer, DoRA's magnitudes (out per layer) and full
    copies of lora.modules_to_save."""
    largest_trainable: int
    """Trainable parameters of the largest single module (ZeRO-3 gathers one module whole)."""
    quantisable: int
    """Base parameters QLoRA stores in 4 bit: the weights of the linear layers inside the blocks (bitsandbytes
    replaces every linear layer but the output head)."""
    targets: int
    """Number of adapted layers."""
    inputs_per_token: int
    """Sum of the adapted layers' input features: with dropout, each layer keeps its dropped-out input for
    backward."""
    ranks_per_token: int
    """rank x adapted layers: each layer keeps its low-rank activation for backward."""


def adapter_shape(model: torch.nn.Module, lora) -> AdapterShape:
    """Count the adapter of `lora` (the run config's lora section) on `model` (loaded or on the meta device) the way
    PEFT builds it."""
    targets = target_modules(model, lora.target_modules)
    blocks = block_list(model)
    saved = list(lora.modules_to_save)
    trainable = largest = quantisable = count = inputs = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith(blocks + "."):
            quantisable += module.weight.numel()
        if saved and _matches(name, saved):
            n = sum(p.numel() for p in module.parameters())
            trainable, largest = trainable + n, max(largest, n)
            continue
        dims = _in_out(module) if _matches(name, targets) else None
        if dims is None:
            continue
        n = lora.rank * (dims[0] + dims[1]) + (dims[1] if lora.use_dora else 0)
        trainable, largest, count, inputs = trainable + n, max(largest, n), count + 1, inputs + dims[0]
    return AdapterShape(trainable=trainable, largest_trainable=largest, quantisable=quantisable, targets=count,
                        inputs_per_token=inputs if lora.dropout > 0 else 0, ranks_per_token=lora.rank * count)
