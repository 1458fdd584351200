"""Local model directories: find them, and check one is usable before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

from trainer_core import paths
from trainer_core.errors import UserError


def check_model_dir(path: str | Path, *, trust_remote_code: bool = False) -> dict:
    """Return the model's config.json after checking the directory holds a loadable safetensors model."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"model.path {p} is not a directory: point it at a local model folder "
                        "(run `python -m trainer_core prepare-models` for the starter model)")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"model.path {p} has no config.json: is this a Hugging Face model folder?")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"model.path {p}: config.json is broken ({e}); re-download or re-export the model") from None
    has_st = any(p.glob("*.safetensors"))
    if not has_st:
        if any(p.glob("*.bin")) or any(p.glob("*.pt")) or any(p.glob("*.pth")):
            raise UserError(f"model.path {p} only has pickle weights (.bin/.pt); we load safetensors only because "
                            "pickle files can run code. Convert them to safetensors first")
        raise UserError(f"model.path {p} has no weights (*.safetensors)")
    _check_weight_files(p)
    if config.get("auto_map") and not trust_remote_code:
        from trainer_core.models.qwen1_import import is_qwen1_dir

        if is_qwen1_dir(p):
            raise UserError(f"model.path {p} is a Qwen-1 checkpoint with its own Python code: import it once as a "
                            f"native Qwen2 model with `python -m trainer_core import-model {p} models/<name>` (or "
                            "the Train page's convert button) and train that; no remote code is needed")
        raise UserError(f"model.path {p} ships its own Python code (auto_map in config.json); tick "
                        "model.trust_remote_code only if you trust its source")
    return config


def _check_weight_files(p: Path) -> None:
    """Catch an interrupted download here rather than in every rank after launch: every shard the index names must
    exist, and every safetensors file must be as long as its header says (reads only the headers)."""
    for index in p.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise UserError(f"model.path {p}: {index.name} is broken; re-download the model") from None
        missing = sorted(s for s in shards if not (p / s).is_file())
        if missing:
            raise UserError(f"model.path {p}: {index.name} lists {len(missing)} missing weight file(s), first "
                            f"{missing[0]}; the download is incomplete")
    for f in sorted(p.glob("*.safetensors")):
        size = f.stat().st_size
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if size < 8 or n > size - 8:
                    raise ValueError("shorter than its header")
                header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
            raise UserError(f"model.path {p}: {f.name} is not a valid safetensors file; re-download it") from None
        if 8 + n + end > size:
            raise UserError(f"model.path {p}: {f.name} is truncated ({size} of {8 + n + end} bytes); re-download it")


def list_local_models() -> list[Path]:
    """Model folders under models/ (the starter model among them) that look loadable."""
    if not paths.MODELS_DIR.is_dir():
        return []
    return sorted(d for d in paths.MODELS_DIR.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and (d / "config.json").is_file())


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False):
    """AutoTokenizer for a local model. `fix_mistral_regex=False` silences a false alarm in transformers 4.57.3+
    that warns about a Mistral regex for any local model saved by those versions (ours included)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, fix_mistral_regex=False)
