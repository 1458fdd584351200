"""Local model directories: find them, and check one is usable before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

from trainer_core.common import paths
from trainer_core.common.errors import UserError
from trainer_core.models.safetensors_io import has_pickle_weights, index_shards, read_header


def check_model_dir(path: str | Path, *, trust_remote_code: bool = False) -> dict:
    """Return the model's config.json after checking the directory holds a loadable safetensors model."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError("models.path_not_dir", "model.path {path} is not a directory: point it at a local model "
                        "folder (run `python -m trainer_core prepare-models` for the starter model)", path=str(p))
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise UserError("models.path_no_config", "model.path {path} has no config.json: is this a Hugging Face "
                        "model folder?", path=str(p))
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError("models.path_config_broken", "model.path {path}: config.json is broken ({reason}); "
                        "re-download or re-export the model", path=str(p), reason=str(e)) from None
    if not any(p.glob("*.safetensors")):
        if has_pickle_weights(p):
            raise UserError("models.path_pickle_only", "model.path {path} only has pickle weights (.bin/.pt); we "
                            "load safetensors only because pickle files can run code. Convert them to safetensors "
                            "first", path=str(p))
        raise UserError("models.path_no_weights", "model.path {path} has no weights (*.safetensors)", path=str(p))
    _check_weight_files(p)
    if config.get("auto_map") and not trust_remote_code:
        _refuse_remote_code(p)
    return config


def _refuse_remote_code(p: Path) -> None:
    from trainer_core.models.qwen1_import import is_qwen1_dir

    if is_qwen1_dir(p):
        raise UserError("models.path_is_qwen1", "model.path {path} is a Qwen-1 checkpoint with its own Python code: "
                        "import it once as a native Qwen2 model with `python -m trainer_core import-model {path} "
                        "models/<name>` (or the Train page's convert button) and train that; no remote code is "
                        "needed", path=str(p))
    raise UserError("models.path_remote_code", "model.path {path} ships its own Python code (auto_map in "
                    "config.json); tick model.trust_remote_code only if you trust its source", path=str(p))


def _check_weight_files(p: Path) -> None:
    """Catch an interrupted download here rather than in every rank after launch: every shard the index names must
    exist, and every safetensors file must be as long as its header says (reads only the headers)."""
    try:
        index_shards(p)
        for f in sorted(p.glob("*.safetensors")):
            read_header(f)
    except UserError as e:
        raise UserError("models.path_weights", "model.path {path}: {problem}", path=str(p), problem=e.text) from None


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

    from trainer_core.data.light_tokenizer import broken_tokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, fix_mistral_regex=False)
    except Exception as e:
        if type(e) is not Exception:  # the tokenizers library's parse errors are bare Exceptions; others are bugs
            raise
        raise broken_tokenizer(path, e) from None

