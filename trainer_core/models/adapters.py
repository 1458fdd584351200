"""LoRA and QLoRA adapters through peft: which layers get them, wrapping a model for training, loading a base with
its adapter for chat, and merging an adapter into a full model.

Targets are found from the model itself (config/lora_targets.py, which the memory planner shares): every linear
layer inside its repeated decoder blocks, never the output head or the embeddings.

An adapter folder (final/ or a checkpoint of a `lora`/`qlora` run) is PEFT's: adapter_config.json (whose
`base_model_name_or_path` points at the base model's folder) and adapter_model.safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from trainer_core.common.errors import UserError
from trainer_core.config.lora_targets import block_list, target_modules  # noqa: F401  (block_list: tests, callers)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_METHODS = ("lora", "qlora")


def uses_adapter(method: str) -> bool:
    return method in ADAPTER_METHODS


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


# ------------------------------------------------------------------------------------------------ preflight

def method_problem(method: str, launcher: str, has_cuda: bool, bnb_installed: bool) -> UserError | None:
    """Why `train.method` cannot run here, or None. QLoRA's 4-bit weights are bitsandbytes' CUDA kernels: without
    a CUDA GPU the run would fail after start-up. Multi-node launchers start ranks on other machines, whose GPUs
    this one cannot see, so only local runs are checked."""
    if method != "qlora" or launcher != "local":
        return None
    if not has_cuda:
        return UserError("models.qlora_needs_cuda", "train.method qlora needs a CUDA GPU (its 4-bit base runs on "
                         "bitsandbytes' CUDA kernels) and this machine has none; use train.method lora")
    if not bnb_installed:
        return UserError("models.qlora_needs_bitsandbytes", "train.method qlora needs the bitsandbytes package, "
                         "which is not installed; `pip install bitsandbytes` or use train.method lora")
    return None


def bitsandbytes_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


# ------------------------------------------------------------------------------------------------ targets

def lora_config(cfg, model: torch.nn.Module):
    """PEFT's LoraConfig for the run config's `lora` section and this model."""
    from peft import LoraConfig

    la = cfg.lora
    return LoraConfig(r=la.rank, lora_alpha=la.alpha, lora_dropout=la.dropout,
                      target_modules=target_modules(model, la.target_modules), use_rslora=la.use_rslora,
                      use_dora=la.use_dora, modules_to_save=list(la.modules_to_save) or None, bias="none",
                      task_type="CAUSAL_LM")


# ------------------------------------------------------------------------------------------------ training

def wrap_for_training(model, cfg, log=lambda _: None):
    """The model with LoRA adapters on its targets; only they (and lora.modules_to_save) train, the base and the
    head stay frozen."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    checkpointing = cfg.train.gradient_checkpointing
    if cfg.train.method == "qlora":
        # Casts norms to fp32 and enables the input gradients that checkpointing over frozen 4-bit layers needs.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        # Reentrant checkpointing (transformers' default) gives a block's output a gradient only when one of its
        # inputs needs one; the frozen embedding's output needs none, so without this the adapters got no gradient
        # ("element 0 of tensors does not require grad" at the first backward).
        model.enable_input_require_grads()
    peft_model = get_peft_model(model, lora_config(cfg, model))
    trainable, total = peft_model.get_nb_trainable_parameters()
    targets = sorted(peft_model.peft_config["default"].target_modules)
    named = ", ".join(targets) if len(targets) <= 12 else f"{len(targets)} layers"
    log(f"lora: {trainable:,} of {total:,} parameters train ({100 * trainable / max(total, 1):.2f}%); "
        f"adapters on {named}")
    return peft_model


def plain_model(model):
    """The transformers model under a PeftModel (the model itself otherwise): its forward's signature is the one
    the loss inspects."""
    return model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model


# ------------------------------------------------------------------------------------------------ using adapters

def adapter_base(adapter_dir: str | Path) -> Path:
    """The base model folder an adapter was trained on, from its adapter_config.json."""
    p = Path(adapter_dir)
    try:
        info = json.loads((p / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base = info["base_model_name_or_path"]
        if not isinstance(base, str) or not base:
            raise ValueError("base_model_name_or_path is empty")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError("models.adapter_config_broken", "{path}: {file} is unreadable ({reason})", path=str(p),
                        file=ADAPTER_CONFIG, reason=str(e)[:200]) from None
    if not Path(base).is_dir():
        raise UserError("models.adapter_base_missing", "{path} is a LoRA adapter of the base model {base}, which is "
                        "not there any more; put the base model back at that path", path=str(p), base=base)
    return Path(base)


def load_with_adapter(adapter_dir: str | Path, *, trust_remote_code: bool = False, dtype=torch.float32):
    """(base + adapter as a PeftModel, unmerged, in eval mode; the base folder). The adapter can be switched off
    with `disable_adapter()` to answer as the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainer_core.models.local import check_model_dir

    base_dir = adapter_base(adapter_dir)
    check_model_dir(base_dir, trust_remote_code=trust_remote_code)
    base = AutoModelForCausalLM.from_pretrained(base_dir, trust_remote_code=trust_remote_code, dtype=dtype,
                                                use_safetensors=True)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    return model.eval(), base_dir


def merged_model(adapter_dir: str | Path, *, trust_remote_code: bool = False) -> tuple[Any, Path]:
    """(base with the adapter merged into its weights, in fp32, a plain transformers model; the base folder)."""
    model, base_dir = load_with_adapter(adapter_dir, trust_remote_code=trust_remote_code, dtype=torch.float32)
    return model.merge_and_unload(), base_dir


def drop_frozen_aliases(engine) -> None:
    """Make a DeepSpeed engine's checkpoints of an adapter run leave out every frozen weight. DeepSpeed's
    `exclude_frozen_parameters` (which the Trainer passes for PEFT models) walks `named_parameters()`, which names a
    tied weight once: the output head tied to the embedding stayed in every checkpoint (the starter's 39 MB of 39 MB;
    on a tied 1.5B model ~0.9 GB in fp32). Resuming loads the module non-strictly and the base is loaded anyway."""
    if getattr(engine, "_drops_frozen_aliases", False):
        return
    plain = engine.module_state_dict

    def module_state_dict(*args, exclude_frozen_parameters=False, **kwargs):
        sd = plain(*args, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
        if exclude_frozen_parameters:
            for name, p in engine.module.named_parameters(remove_duplicate=False):
                if not p.requires_grad:
                    sd.pop(name, None)
        return sd

    engine.module_state_dict = module_state_dict
    engine._drops_frozen_aliases = True
