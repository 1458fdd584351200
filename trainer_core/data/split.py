"""Which records of a dataset are held out for evaluation: one rule, used by training and by the persona evaluation,
so "the run's held-out split" names the same records in both."""

from __future__ import annotations

import random


def held_out_split(n_records: int, *, seed: int, eval_ratio: float, max_eval: int) -> tuple[list[int], list[int]]:
    """(held-out indices, training indices) over n_records usable records: a seeded shuffle, the first
    round(n * eval_ratio) held out (at least one when eval_ratio > 0, at most max_eval), the rest trained."""
    order = list(range(n_records))
    random.Random(seed).shuffle(order)
    n_eval = min(int(round(n_records * eval_ratio)), max_eval)
    if eval_ratio > 0:
        n_eval = max(1, n_eval)
    return order[:n_eval], order[n_eval:]
