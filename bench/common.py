"""Shared by the benchmark scripts: the record split, the held-out evaluation both recipes are scored with, and
reading a rank's peak memory.

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
