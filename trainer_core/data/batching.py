"""Turn encoded examples into training batches: optional packing without cross-contamination, and collation.

training.train.build_rows chooses which records share a row (first_fit_decreasing, then a seeded shuffle);
ArrayRows lays each row out. Packing concatenates several examples into one row and restarts `position_ids` at 0
for each; with no attention mask, transformers (>= 4.53) derives a block-diagonal causal mask from those position
ids, so one example never attends to another. The first token of each example carries label -100 (it is a
system/user token), so no loss crosses a boundary either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer_core.data.chat_format import IGNORE_INDEX


def first_fit_decreasing(lengths, capacity: int) -> list[list[int]]:
    """Group item indices into bins of at most ``capacity``: longest first, each into the first bin it fits.

    A max-tree over the bins' free space finds that first bin in O(log bins) instead of scanning every open bin,
    which made a million records quadratic. Same bins, in the same order, as the scan."""
    lengths = [int(n) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep their input order
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    tree = [0] * (2 * size)  # tree[1] is the most free space of any bin; leaves size.. are the bins in order
    bins: list[list[int]] = []
    for i in order:
        need = lengths[i]
        if tree[1] >= need:
            node = 1
            while node < size:
                node = 2 * node if tree[2 * node] >= need else 2 * node + 1
            bins[node - size].append(i)
            tree[node] -= need
        else:
            node = size + len(bins)
            bins.append([i])
            tree[node] = capacity - need
        node //= 2
        while node:
            best = max(tree[2 * node], tree[2 * node + 1])
            if tree[node] == best:
                break
            tree[node] = best
            node //= 2
    return bins


class ArrayRows(torch.utils.data.Dataset):
    """Training rows built on demand from an EncodedSet: row k is the records ``members[k]`` laid end to end,
    each with position ids restarting at 0 (one member per row when nothing is packed)."""

    def __init__(self, encoded, members: list[list[int]]):
        self.encoded, self.members = encoded, members

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, k: int) -> dict:
        enc = self.encoded
        spans = [(int(enc.offsets[i]), int(enc.offsets[i + 1])) for i in self.members[k]]
        ids = np.concatenate([enc.ids[lo:hi] for lo, hi in spans])
        labels = np.concatenate([enc.labels[lo:hi] for lo, hi in spans])
        pos = np.concatenate([np.arange(hi - lo) for lo, hi in spans])
        return {"input_ids": ids.tolist(), "labels": labels.tolist(), "position_ids": pos.tolist()}


@dataclass
class Collator:
    """Right-pads a batch. Packed batches get no attention mask (position ids carry the boundaries)."""

    pad_token_id: int
    packed: bool
    flatten: bool = False
    """Packed batches only: concatenate the rows into a single one, without padding. flash_attention_2 finds
    example boundaries from position ids only in a batch of one row (it then runs its variable-length kernel);
    with several rows it would let each row's examples attend to each other."""

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.packed and self.flatten:
            return {k: torch.tensor([[v for f in features for v in f[k]]], dtype=torch.long)
                    for k in ("input_ids", "labels", "position_ids")}
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
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
