"""Consolidate a ZeRO checkpoint into one safetensors model with DeepSpeed's own zero_to_fp32 tooling; for a
lora/qlora run, export its adapter, or with --merge the base with the adapter merged in.

The result (a run's exports/checkpoint-N/: runs/outputs.py picks the checkpoint and names the folder) loads with plain
`AutoModelForCausalLM.from_pretrained`. zero_to_fp32 reads the optimizer shards with torch.load; it is only ever
pointed at checkpoints our own trainer wrote into a run directory, never at user-supplied files.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import tempfile
from pathlib import Path

from trainer_core.common.atomic import COMPLETE_MARKER, mark_complete, write_json_atomic
from trainer_core.common.errors import UserError
from trainer_core.models.persona_template import PERSONA_FILE

COPY_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")
"""Config, generation config, tokenizer and chat-template files: what a model folder holds besides weights."""
SKIP = {"trainer_state.json", COMPLETE_MARKER}
"""The Trainer's own JSON in a checkpoint, not the model's."""


def model_files(ckpt: Path, base_model: Path) -> list[Path]:
    """The files of a checkpoint folder that belong in a model folder besides the weights. Python files only when
    the base model ships a file of that name (a remote-code model's own code): DeepSpeed drops its helper
    scripts (zero_to_fp32.py, zero_to_torch.py) into every checkpoint, and they are not part of the model."""
    out = []
    for f in sorted(ckpt.iterdir()):
        if not f.is_file() or f.name in SKIP or f.name.endswith(".index.json"):
            continue
        if f.suffix in COPY_SUFFIXES or (f.suffix == ".py" and (base_model / f.name).is_file()):
            out.append(f)
    return out


def check_zero_shards(ckpt: Path) -> None:
    """Every ZeRO shard of the checkpoint opens as the zip archive torch.save writes: one that a full disk or a
    killed copy truncated loses its zip directory at the end, and would fail deep inside DeepSpeed's loader."""
    import zipfile

    for f in sorted(ckpt.glob("global_step*/*.pt")):
        try:
            zipfile.ZipFile(f).close()
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError("models.export_shard_damaged", "{ckpt}: {file} is damaged ({detail}); export another "
                            "checkpoint with --checkpoint", ckpt=ckpt.name, file=f"{f.parent.name}/{f.name}",
                            detail=str(e)[:200]) from None


def no_space(e: BaseException) -> bool:
    """Whether an exception means the disk is full: an OSError, or safetensors' Rust writer's own error, whose
    text carries the OS error (StorageFull, os error 28)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    markers = ("StorageFull", "code: 28", "os error 28")
    return type(e).__name__ == "SafetensorError" and any(m in str(e) for m in markers)


@contextlib.contextmanager
def disk_full_named(dest: Path):
    """A full disk while a model folder is written (final/, an export) as one line naming the folder and the free
    space, instead of safetensors' raw `SafetensorError: ... IoError(Os { code: 28 ... })`."""
    try:
        yield
    except Exception as e:
        if not no_space(e):
            raise
        free = shutil.disk_usage(dest.parent).free
        raise UserError("models.disk_full", "no space left on device while writing {dest}: {free} MiB free on its "
                        "disk; free space there and try again", dest=str(dest), free=free // 2**20) from None


def consolidate(ckpt: Path, dest: Path, cfg, *, persona_in_template: bool = True) -> Path:
    """The ZeRO checkpoint folder `ckpt` of a run with config `cfg` as one model folder at `dest` (written beside it,
    marked complete, then renamed into place, replacing an older one). Returns `dest`."""
    check_zero_shards(ckpt)
    # ZeRO stage 0 saves no optimizer shards for zero_to_fp32 to read (it failed with a TypeError on them): there the
    # Trainer's own save beside the DeepSpeed state is the model, its tied weights stored once.
    weights = [] if any(ckpt.glob("global_step*/*optim_states.pt")) else sorted(ckpt.glob("model*.safetensors*"))
    if not weights:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # after the checks: seconds

    with published(dest, {"source": str(ckpt)}) as tmp:
        state = None if weights else get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
        if state is not None:
            save_safetensors(dedupe_shared(state), tmp)
        for f in weights:
            shutil.copy2(f, tmp / f.name)
        for f in model_files(ckpt, Path(cfg.model.path)):
            if not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
        write_persona(cfg, tmp, in_template=persona_in_template)
    return dest


@contextlib.contextmanager
def published(dest: Path, info: dict):
    """A folder built beside `dest` (yielded), then marked complete with `info` and renamed into place, replacing an
    older one; removed if building fails, and a full disk is named (the export is never half there)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with disk_full_named(dest):
            yield tmp
        mark_complete(tmp, info)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_adapter(src: Path, dest: Path, cfg, *, merge: bool = False, persona_in_template: bool = True) -> Path:
    """The adapter folder `src` of a lora/qlora run with config `cfg` as a model folder at `dest`: with `merge`, a
    full model (the base with the adapter merged into its weights, in the base's dtype, tied weights stored once)
    that loads without peft; else the adapter itself (PEFT's format, pointing at its base), tokenizer, template and
    persona. Written beside `dest`, marked complete, then renamed into place."""
    from trainer_core.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter_dir, merged_model

    if not is_adapter_dir(src):
        raise UserError("models.export_no_adapter", "{src} holds no adapter ({file} missing)",
                        src=str(src), file=ADAPTER_CONFIG)
    with published(dest, {"source": str(src), "merged": merge}) as tmp:
        if merge:
            model, base_dir = merged_model(src, trust_remote_code=cfg.model.trust_remote_code)
            # The merge is computed in fp32; the folder keeps the base's own dtype (a 7B stays 15 GB, not 30).
            model.to(torch_dtype_of(base_dir)).save_pretrained(str(tmp), safe_serialization=True)
        else:
            base_dir = Path(cfg.model.path)
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                shutil.copy2(src / name, tmp / name)
        for f in model_files(src, base_dir):
            if not (tmp / f.name).exists() and not (merge and f.name == ADAPTER_CONFIG):
                shutil.copy2(f, tmp / f.name)
        write_persona(cfg, tmp, in_template=persona_in_template)
    return dest


def torch_dtype_of(model_dir: Path):
    """The dtype a model folder's weights are stored in, from its config.json."""
    import json

    import torch

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, name, torch.float32)


def write_persona(cfg, dest: Path, *, in_template: bool = True) -> None:
    """persona.json beside the weights (final/ and every export), so chat uses the persona they were trained with;
    with `in_template`, the saved chat template also makes it the default system turn (persona_template.py), so
    plain transformers and vLLM users get the persona without passing it."""
    from trainer_core.models.persona_template import write_default_persona

    templated = in_template and write_default_persona(dest, cfg.data.persona)
    write_json_atomic(dest / PERSONA_FILE, {"persona": cfg.data.persona, "base_model": cfg.model.path,
                                            "trust_remote_code": cfg.model.trust_remote_code,
                                            "in_template": templated})


def dedupe_shared(state: dict) -> dict:
    """Tied weights (embedding = lm_head) come back as one tensor under two names; safetensors refuses shared
    storage, and from_pretrained re-ties them, so the later names are dropped."""
    seen: dict = {}
    out = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen[key] = name
        out[name] = tensor.contiguous()
    return out


def share_tied(model, state: dict) -> dict:
    """`state` with each tied weight (one parameter under several names: embedding = lm_head) as one tensor again,
    so that save_pretrained stores it once and records the tie, as it does for a plain tied model. Under ZeRO 0-2 the
    Trainer saves a state dict that accelerate cloned tensor by tensor, and the clones no longer share storage:
    save_pretrained then wrote lm_head.weight beside model.embed_tokens.weight, a second copy of the largest tensor
    (a tied Qwen2.5's final/ twice the size it is under ZeRO-3, whose gathered state dict keeps the tie). Only
    copies with equal values are joined."""
    import torch

    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    for group in names.values():
        present = [n for n in group if n in state]
        for other in present[1:]:
            first, copy = state[present[0]], state[other]
            same = copy.shape == first.shape and copy.dtype == first.dtype and torch.equal(copy, first)
            if copy is not first and same:
                state[other] = first
    return state


def save_safetensors(state: dict, dest: Path, max_shard_bytes: int = 5 * 1024**3) -> None:
    import json

    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_bytes)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(dest / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": split.tensor_to_filename}
        (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
