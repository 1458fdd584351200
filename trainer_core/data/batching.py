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

    Items of one length are placed together: the first bins with room for one take as many as fit, in bin order,
    and the rest open new bins, each filled before the next opens. That is exactly where first fit puts them one
    by one (a bin passed over has less room than one item and only ever loses room), with one array operation
    over the bins per distinct length instead of a Python step per item (part of the million-record preparation
    figure in docs/benchmarks.md). Same bins, in the same order, as scanning every open bin per item."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    n = len(lengths)
    if n == 0:
        return []
    order = np.argsort(-lengths, kind="stable")  # ties keep their input order
    ordered = lengths[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]).tolist() + [n]
    free = np.empty(n, dtype=np.int64)  # room left in each bin opened so far (at most one bin per item)
    bin_of = np.empty(n, dtype=np.int64)  # the bin of each item, in placement order
    n_bins = 0
    for s, e in zip(starts[:-1], starts[1:]):
        k, m = int(ordered[s]), e - s
        if k > capacity:  # never fits with anything: a bin each (room below zero)
            bin_of[s:e] = np.arange(n_bins, n_bins + m)
            free[n_bins:n_bins + m] = capacity - k
            n_bins += m
            continue
        placed = 0
        if n_bins:
            fits = np.flatnonzero(free[:n_bins] >= k)
            take = free[fits] // k if k else np.full(len(fits), m)
            if len(fits):
                filled = np.cumsum(take)
                last = min(int(np.searchsorted(filled, m)), len(fits) - 1)
                fits, take = fits[:last + 1], take[:last + 1].copy()
                take[-1] -= max(0, int(filled[last]) - m)
                placed = int(take.sum())
                bin_of[s:s + placed] = np.repeat(fits, take)
                free[fits] -= take * k
        rest = m - placed
        if rest:
            per = capacity // k if k else rest
            new_bins = -(-rest // per)
            counts = np.full(new_bins, per, dtype=np.int64)
            counts[-1] = rest - per * (new_bins - 1)
            bin_of[s + placed:e] = np.repeat(np.arange(n_bins, n_bins + new_bins), counts)
            free[n_bins:n_bins + new_bins] = capacity - counts * k
            n_bins += new_bins
    items = order[np.argsort(bin_of, kind="stable")].tolist()  # grouped by bin, each in placement order
    bounds = np.cumsum(np.bincount(bin_of, minlength=n_bins)).tolist()
    return [items[a:b] for a, b in zip([0, *bounds[:-1]], bounds)]


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
