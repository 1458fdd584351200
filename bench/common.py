"""Shared by the benchmark scripts: the record split, the held-out evaluation every recipe is scored with, reading
a rank's peak memory, and the one builder of random models in a real shape (the --shape presets).

Held-out loss is one definition for every model: the records are encoded the way chat inference sees them
(`trainer_core.data.chat_format`, ChatML with the persona as system turn, cut at 128 tokens), and the loss is the mean
cross-entropy over all answer tokens and their `<|im_end|>` (a per-token mean over the whole held-out set).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if (_checkout := str(Path(__file__).resolve().parent.parent)) not in sys.path:
    sys.path.insert(0, _checkout)  # run as `python bench/x.py`: make trainer_core importable

from trainer_core.config.run_config import DEFAULT_PERSONA  # noqa: E402
from trainer_core.data.chat_format import IGNORE_INDEX, encode_conversations  # noqa: E402
from trainer_core.common.paths import PROJECT_ROOT as ROOT  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "huanhuan.json"  # the shared folder beside the checkout
EVAL_MAX_LENGTH = 128  # the tutorial's MAX_LENGTH


def data_file(path: Path) -> Path:
    """The --data file, or an exit naming what is missing and how to give it."""
    if not path.is_file():
        raise SystemExit(f"--data {path}: no such file. Pass --data with a JSON array of alpaca records "
                         f"(huanhuan.json), or put it at {DEFAULT_DATA}.")
    return path


def as_conversations(records: list[dict]) -> list[list[dict]]:
    """Alpaca records as our trainer reads them, through trainer_core's own loader (data/dataset.py)."""
    from trainer_core.data.dataset import load_dataset_bytes

    report = load_dataset_bytes(json.dumps(records, ensure_ascii=False).encode("utf-8"), "records.json")
    if report.n_usable != len(records):
        raise SystemExit(f"{report.n_errors} of {len(records)} records are unusable, first: {report.errors[0]}")
    return report.conversations


def encode_heldout(tokenizer, records: list[dict], persona: str = DEFAULT_PERSONA):
    enc = encode_conversations(tokenizer, as_conversations(records), persona=persona, max_length=EVAL_MAX_LENGTH)
    return [e for e in enc if not e.answer_lost]


@torch.no_grad()
def heldout_loss(model, encoded) -> float:
    """Mean cross-entropy per answer token over the held-out set, one record at a time, fp32 logits."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for e in encoded:
        ids = torch.tensor([e.input_ids], device=device)
        target = torch.tensor(e.labels[1:], device=device)
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        total += F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int((target != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")


# ---------------------------------------------------------------- model shapes

# Presets for --shape: random weights in a real model's shape, with the starter's tokenizer, vocabulary, special ids
# and rope (what the config does not override comes from the starter's config). Qwen2.5-0.5B's published shape; the
# 6-layer cut keeps its width, so per-layer and head costs stay those of the real model.
QWEN25_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "tie_word_embeddings": True, "max_position_embeddings": 32768}
SHAPES: dict[str, dict | None] = {
    "starter": None,  # the starter itself (models/qwen2-starter): a head-dominated toy, 9.7M of 9.8M the embedding
    "qwen2.5-0.5b": QWEN25_05B,  # ~494M
    "qwen2.5-0.5b-6l": {**QWEN25_05B, "num_hidden_layers": 6},  # ~226M
}
SHAPES_DIR = ROOT / ".cache" / "shapes"  # git-ignored (.cache/); built once, reused by every later invocation


def shape_config(overrides: dict, starter: Path | None = None):
    """The starter's config with `overrides` (hidden size, layers, heads, ...): every layer full attention."""
    from transformers import AutoConfig

    from trainer_core.common.paths import STARTER_MODEL_DIR

    config = AutoConfig.from_pretrained(starter or STARTER_MODEL_DIR)
    layers = overrides.get("num_hidden_layers", config.num_hidden_layers)
    config.update({**overrides, "max_window_layers": layers, "layer_types": ["full_attention"] * layers})
    return config


def count_params(overrides: dict) -> int:
    """Parameters of a shape (a tied head counted once), from a model built on the meta device: no memory, no time."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape_config(overrides))
    return sum(p.numel() for p in model.parameters())


def build_random_model(dest: Path, overrides: dict, *, dtype=torch.float32, device: str = "cpu",
                       starter: Path | None = None) -> Path:
    """The one builder of the benchmarks' random models: a Qwen2 of the starter's config with `overrides`, weights
    from seed 0 in `dtype` (initialised on `device`: the GPU check builds on the GPU), saved as safetensors with the
    starter's tokenizer and generation config."""
    import shutil

    from transformers import AutoModelForCausalLM

    from trainer_core.common.paths import STARTER_MODEL_DIR

    starter = starter or STARTER_MODEL_DIR
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(shape_config(overrides, starter), dtype=dtype)
    model.save_pretrained(dest, safe_serialization=True)
    for f in starter.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "generation_config.json":
            shutil.copy(f, dest / f.name)
    return dest


def shape_model(name: str, *, root: Path | None = None, dtype=torch.float32, device: str = "cpu") -> Path:
    """The model folder of the --shape preset `name`: the starter itself, or the preset built once under
    root/<name> (default .cache/shapes) and reused while its recorded shape and dtype still match. Built into a
    temporary folder and renamed, so a stopped build leaves nothing that looks finished."""
    import shutil
    import tempfile

    from trainer_core.common.paths import STARTER_MODEL_DIR

    if name not in SHAPES:
        raise SystemExit(f"--shape {name}: unknown shape; choose from {', '.join(SHAPES)}")
    if SHAPES[name] is None:
        return STARTER_MODEL_DIR
    dest = (root or SHAPES_DIR) / name
    want = {"shape": SHAPES[name], "dtype": str(dtype).removeprefix("torch.")}
    marker = dest / "shape.json"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == want:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        print(f"building the {name} shape (random weights, {want['dtype']}) into {dest} ...", flush=True)
        build_random_model(tmp, SHAPES[name], dtype=dtype, device=device)
        write_json(tmp / "shape.json", want)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
