"""Consolidate a ZeRO checkpoint into one safetensors model with DeepSpeed's own zero_to_fp32 tooling; for a
lora/qlora run, export its adapter, or with --merge the base with the adapter merged in.

The result (runs/<name>/exports/checkpoint-N/, or .../<final or checkpoint-N>-merged/) loads with plain
`AutoModelForCausalLM.from_pretrained`.
zero_to_fp32 reads the optimizer shards with torch.load; it is only ever pointed at checkpoints our own trainer
wrote into this run directory, never at user-supplied files.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import tempfile
from pathlib import Path

from trainer_core.runs import protocol
from trainer_core.config.run_config import load_config
from trainer_core.common.errors import UserError

COPY_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")
"""Config, generation config, tokenizer and chat-template files: what a model folder holds besides weights."""
SKIP = {"trainer_state.json", protocol.COMPLETE_MARKER}
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


def pick_checkpoint(run: Path, step: int | None) -> Path:
    done = protocol.complete_checkpoints(run)
    if not done:
        raise UserError("models.export_no_checkpoint", "run {run} has no complete checkpoint to export", run=run.name)
    if step is None:
        return done[-1]
    for c in done:
        if protocol.checkpoint_step(c) == step:
            return c
    raise UserError("models.export_no_such_checkpoint", "run {run} has no complete checkpoint {step}; complete ones: "
                    "{steps}", run=run.name, step=step, steps=", ".join(str(protocol.checkpoint_step(c)) for c in done))


def export_checkpoint(run: Path, step: int | None = None, *, persona_in_template: bool = True) -> Path:
    ckpt = pick_checkpoint(run, step)
    check_zero_shards(ckpt)
    cfg = load_config(run / protocol.CONFIG)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # after the checks: seconds

    dest = run / protocol.EXPORTS / ckpt.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ckpt.name}.", dir=dest.parent))
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
        with disk_full_named(dest):
            save_safetensors(dedupe_shared(state), tmp)
            for f in model_files(ckpt, Path(cfg.model.path)):
                if not (tmp / f.name).exists():
                    shutil.copy2(f, tmp / f.name)
            write_persona(cfg, tmp, in_template=persona_in_template)
        protocol.mark_complete(tmp, {"source": str(ckpt)})
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def adapter_source(run: Path, step: int | None) -> Path:
    """The adapter folder of a lora/qlora run to export: checkpoint `step`, else final/, else the newest complete
    checkpoint. The Trainer writes each one's adapter_model.safetensors whole, so no ZeRO shard is read."""
    if step is None and protocol.has_final(run):
        return run / protocol.FINAL
    return pick_checkpoint(run, step)


def export_adapter_run(run: Path, step: int | None = None, *, merge: bool = False,
                       persona_in_template: bool = True) -> Path:
    """A lora/qlora run's export into exports/: with `merge`, a full model (the base with the adapter merged into
    its weights, in the base's dtype, tied weights stored once) that loads without peft; else the adapter itself
    (PEFT's format, pointing at its base), tokenizer, template and persona."""
    from trainer_core.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter_dir, merged_model

    cfg = load_config(run / protocol.CONFIG)
    src = adapter_source(run, step)
    if not is_adapter_dir(src):
        raise UserError("models.export_no_adapter", "{src} of run {run} holds no adapter ({file} missing)",
                        src=src.name, run=run.name, file=ADAPTER_CONFIG)
    dest = run / protocol.EXPORTS / (f"{src.name}-merged" if merge else src.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with disk_full_named(dest):
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
        protocol.mark_complete(tmp, {"source": str(src), "merged": merge})
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    protocol.write_json_atomic(dest / protocol.PERSONA, {"persona": cfg.data.persona, "base_model": cfg.model.path,
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
