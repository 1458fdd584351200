"""Turn encoded examples into training batches: optional packing without cross-contamination, and collation.

Packing concatenates several examples into one row and restarts `position_ids` at 0 for each; with no attention
mask, transformers (>= 4.53) derives a block-diagonal causal mask from those position ids, so one example never
attends to another. The first token of each example carries label -100 (it is a system/user token), so no loss
crosses a boundary either.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class Row:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def single_rows(examples) -> list[Row]:
    return [Row(list(e.input_ids), list(e.labels), list(range(len(e.input_ids)))) for e in examples]


def pack_rows(examples, max_length: int, seed: int) -> list[Row]:
    """First-fit-decreasing packing into rows of at most max_length tokens."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    bins: list[list[int]] = []
    space: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for b, free in enumerate(space):
            if n <= free:
                bins[b].append(i)
                space[b] -= n
                break
        else:
            bins.append([i])
            space.append(max_length - n)
    random.Random(seed).shuffle(bins)
    rows = []
    for members in bins:
        ids, labels, pos = [], [], []
        for i in members:
            e = examples[i]
            ids += e.input_ids
            labels += e.labels
            pos += range(len(e.input_ids))
        rows.append(Row(ids, labels, pos))
    return rows


class RowDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        return {"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids}


@dataclass
class Collator:
    """Right-pads a batch. Packed batches get no attention mask (position ids carry the boundaries)."""

    pad_token_id: int
    packed: bool

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        pos = torch.zeros((len(features), width), dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            pos[i, :n] = torch.tensor(f["position_ids"])
            # Padding continues the position count so it looks like one more (ignored) segment, not a new one.
            pos[i, n:] = torch.arange(n, width) if self.packed else 0
            mask[i, :n] = 1
        batch = {"input_ids": ids, "labels": labels, "position_ids": pos}
        if not self.packed:
            batch["attention_mask"] = mask
        return batch
