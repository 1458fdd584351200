"""Consolidate a ZeRO checkpoint into one safetensors model with DeepSpeed's own zero_to_fp32 tooling.

The result (runs/<name>/exports/checkpoint-N/) loads with plain `AutoModelForCausalLM.from_pretrained`.
zero_to_fp32 reads the optimizer shards with torch.load; it is only ever pointed at checkpoints our own trainer
wrote into this run directory, never at user-supplied files.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from trainer_core.runs import protocol as rd
from trainer_core.config.run_config import load_config
from trainer_core.errors import UserError

COPY_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".py", ".jinja")
# .py files are copied for remote-code models; DeepSpeed's own helper script in every checkpoint is not the model's.
SKIP = {"trainer_state.json", "rng_state.pth", "scheduler.pt", "training_args.bin", "zero_to_fp32.py",
        rd.COMPLETE_MARKER}


def pick_checkpoint(run: Path, step: int | None) -> Path:
    done = rd.complete_checkpoints(run)
    if not done:
        raise UserError("models.export_no_checkpoint", "run {run} has no complete checkpoint to export", run=run.name)
    if step is None:
        return done[-1]
    for c in done:
        if rd.checkpoint_step(c) == step:
            return c
    raise UserError("models.export_no_such_checkpoint", "run {run} has no complete checkpoint {step}; complete ones: "
                    "{steps}", run=run.name, step=step, steps=", ".join(str(rd.checkpoint_step(c)) for c in done))


def export_checkpoint(run: Path, step: int | None = None, *, persona_in_template: bool = True) -> Path:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = pick_checkpoint(run, step)
    dest = run / rd.EXPORTS / ckpt.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ckpt.name}.", dir=dest.parent))
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
        save_safetensors(dedupe_shared(state), tmp)
        for f in ckpt.iterdir():
            wanted = f.suffix in COPY_SUFFIXES and f.name not in SKIP and not f.name.endswith(".index.json")
            if f.is_file() and wanted and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
        write_persona(load_config(run / rd.CONFIG), tmp, in_template=persona_in_template)
        rd.mark_complete(tmp, {"source": str(ckpt)})
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def write_persona(cfg, dest: Path, *, in_template: bool = True) -> None:
    """persona.json beside the weights (final/ and every export), so chat uses the persona they were trained with;
    with `in_template`, the saved chat template also makes it the default system turn (persona_template.py), so
    plain transformers and vLLM users get the persona without passing it."""
    from trainer_core.models.persona_template import write_default_persona

    templated = in_template and write_default_persona(dest, cfg.data.persona)
    rd.write_json_atomic(dest / rd.PERSONA, {"persona": cfg.data.persona, "base_model": cfg.model.path,
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
