"""How long the records are in tokens, and what truncation at max_length does to them, measured the way training
encodes them (chat_format), in batches, holding 4 bytes per record."""

from __future__ import annotations

import math
from array import array
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from trainer_core.data.chat_format import IGNORE_INDEX
from trainer_core.common.overlap import Overlapped

STATS_BATCH = 2048
"""Conversations encoded per tokenizer call when measuring: large enough for the batch path, small in memory."""


@dataclass
class TokenStats:
    n: int
    """Conversations measured."""
    p50: int
    p95: int
    max: int
    mean: float
    """Sequence lengths in tokens, before truncation."""
    max_length: int
    """The training max_length the truncation counts refer to."""
    n_truncated: int
    """Conversations longer than max_length."""
    n_answer_lost: int
    """Conversations with no answer token left within max_length: training skips them (usually their prompt alone
    fills max_length, so they are also counted in n_truncated)."""
    n_label_tokens: int
    """Tokens trained on (labels) after truncation to max_length, summed over all conversations."""
    lengths: list[int]
    """Each conversation's full length, in input order (for a histogram)."""

    def to_dict(self) -> dict:
        return asdict(self)


class TokenCounter:
    """Token lengths and truncation figures, fed one conversation at a time and encoded in batches, so measuring
    a million records holds one batch of them plus 4 bytes per record."""

    def __init__(self, tokenizer, *, persona: str, max_length: int, batch: int = STATS_BATCH,
                 progress: Callable[[int], None] | None = None):
        self.tokenizer, self.persona, self.max_length, self.batch = tokenizer, persona, max_length, batch
        self.progress = progress  # called after each batch with the number of conversations measured so far
        self._pending: list[list[dict]] = []
        self._lengths = array("i")
        self.n_truncated = self.n_answer_lost = self.n_label_tokens = 0
        # Each batch is encoded in a worker thread while the caller reads the next records (common/overlap).
        self._encoder = Overlapped(self._encode, self._count)

    def add(self, conversation: list[dict]) -> None:
        self._pending.append(conversation)
        if len(self._pending) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        self._encoder.submit(self._pending)
        self._pending = []

    def _encode(self, batch: list[list[dict]]) -> list:
        from trainer_core.data.chat_format import encode_conversations

        return encode_conversations(self.tokenizer, batch, persona=self.persona, max_length=2**31 - 1)

    def _count(self, full: list) -> None:
        for e in full:
            self._lengths.append(len(e.input_ids))
            # Training keeps the first max_length tokens (chat_format's cut); counting the labels in that prefix
            # of the full encoding gives its figures without tokenizing everything a second time.
            if len(e.labels) > self.max_length:
                kept = e.labels[:self.max_length]
                n_labels = len(kept) - kept.count(IGNORE_INDEX)
            else:
                n_labels = e.n_label_tokens
            self.n_truncated += len(e.input_ids) > self.max_length
            self.n_answer_lost += n_labels == 0
            self.n_label_tokens += n_labels
        if self.progress is not None:
            self.progress(len(self._lengths))

    def close(self) -> None:
        """Stop the encoding thread (result() does too); for a caller that gives up before the result."""
        self._encoder.close()

    def result(self) -> TokenStats:
        if self._pending:
            self._flush()
        try:
            self._encoder.finish()
        finally:
            self._encoder.close()
        lengths = np.frombuffer(self._lengths, dtype=np.int32) if len(self._lengths) else np.zeros(0, np.int32)
        ordered = np.sort(lengths)
        return TokenStats(
            n=len(lengths),
            p50=_percentile(ordered, 0.50),
            p95=_percentile(ordered, 0.95),
            max=int(ordered[-1]) if len(ordered) else 0,
            mean=float(lengths.mean()) if len(lengths) else 0.0,
            max_length=self.max_length,
            n_truncated=self.n_truncated,
            n_answer_lost=self.n_answer_lost,
            n_label_tokens=self.n_label_tokens,
            lengths=lengths.tolist(),
        )


def token_stats(report_or_conversations, tokenizer, *, persona: str, max_length: int,
                progress: Callable[[int], None] | None = None) -> TokenStats:
    """Tokenise every conversation the way training will and measure lengths and truncation at ``max_length``.
    Takes a DataReport (its kept conversations) or a list of conversations."""
    counter = TokenCounter(tokenizer, persona=persona, max_length=max_length, progress=progress)
    conversations = getattr(report_or_conversations, "conversations", report_or_conversations)
    try:
        for conversation in conversations:
            counter.add(conversation)
        return counter.result()
    finally:
        counter.close()


def _percentile(ordered, q: float) -> int:
    """Nearest-rank percentile of an already sorted sequence (0 for an empty one)."""
    if len(ordered) == 0:
        return 0
    return int(ordered[max(0, math.ceil(q * len(ordered)) - 1)])
