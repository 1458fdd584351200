"""A dataset file encoded for training as flat arrays, in memory that does not grow with Python objects per record.

One pass reads the file record by record (``data.load_dataset(keep=False)``), encodes the usable records in
batches through ``chat_format`` (the fast tokenizer's batch path) and appends their ids and labels to int32
arrays. A million short records take about 4 bytes per token twice, instead of gigabytes of lists and dicts.
The result is cached on disk under a hash of the file's bytes, the persona, max_length and the tokenizer, as .npz
(no pickle), written atomically; a relaunch of the same run reads it back instead of tokenizing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from array import array
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from trainer_core.common import paths
from trainer_core.data.chat_format import IGNORE_INDEX, Encoded, encode_conversations
from trainer_core.common.overlap import Overlapped

BATCH = 2048
"""Conversations per tokenizer call."""
CACHE_VERSION = 4
"""Bump when validation or encoding rules change what a file encodes to."""


@dataclass
class EncodedSet:
    """Every usable record of one file, in file order: record i is ``ids[offsets[i]:offsets[i+1]]``."""

    ids: np.ndarray
    """int32 token ids of all records, concatenated (each record cut at max_length)."""
    labels: np.ndarray
    """int32 labels, same layout; IGNORE_INDEX where nothing is trained."""
    offsets: np.ndarray
    """int64, one more than there are records: where each record starts in ids/labels."""
    truncated: np.ndarray
    """bool per record: it was longer than max_length."""
    n_labels: np.ndarray
    """int32 per record: trained tokens after the cut (0 means the whole answer was lost)."""
    n_rows: int
    """Records in the file, usable or not."""
    n_errors: int
    """Records left out for problems (a record with two problems counts once)."""
    first_error: str
    """The first of them, for a message when no record is usable ("" when none)."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def lengths(self) -> np.ndarray:
        """Tokens per record. Computed once: read per record in a loop, a fresh np.diff of every offset each time
        made the trainer's packing of a million records quadratic (314 of its 460 CPU seconds)."""
        return np.diff(self.offsets)

    def example(self, i: int) -> Encoded:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return Encoded(input_ids=self.ids[lo:hi].tolist(), labels=self.labels[lo:hi].tolist(),
                       truncated=bool(self.truncated[i]), answer_lost=bool(self.n_labels[i] == 0),
                       n_label_tokens=int(self.n_labels[i]))


class _Builder:
    """Collects encoded batches into growing int32 buffers (array.array grows in place, 4 bytes per token)."""

    def __init__(self, tokenizer, persona: str, max_length: int):
        self.tokenizer, self.persona, self.max_length = tokenizer, persona, max_length
        self.pending: list[list[dict]] = []
        self.ids, self.labels = array("i"), array("i")
        self.offsets = array("q", [0])
        self.truncated, self.n_labels = array("b"), array("i")
        # Each batch is encoded in a worker thread while the file's next records are read (common/overlap).
        self.encoder = Overlapped(self._encode, self._append)

    def add(self, row: int, conversation: list[dict]) -> None:
        self.pending.append(conversation)
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.encoder.submit(self.pending)
            self.pending = []

    def _encode(self, batch: list[list[dict]]) -> list[Encoded]:
        return encode_conversations(self.tokenizer, batch, persona=self.persona, max_length=self.max_length)

    def _append(self, encoded: list[Encoded]) -> None:
        for e in encoded:
            self.ids.extend(e.input_ids)
            self.labels.extend(e.labels)
            self.offsets.append(len(self.ids))
            self.truncated.append(e.truncated)
            self.n_labels.append(e.n_label_tokens)

    def result(self, n_rows: int, n_errors: int, first_error: str) -> EncodedSet:
        self.flush()
        self.encoder.finish()
        as_np = lambda buf, dtype: np.frombuffer(buf, dtype=dtype) if len(buf) else np.zeros(0, dtype)  # noqa: E731
        return EncodedSet(ids=as_np(self.ids, np.int32), labels=as_np(self.labels, np.int32),
                          offsets=np.frombuffer(self.offsets, dtype=np.int64),
                          truncated=as_np(self.truncated, np.int8).astype(bool), n_labels=as_np(self.n_labels, np.int32),
                          n_rows=n_rows, n_errors=n_errors, first_error=first_error)


def encode_file(path, tokenizer, *, persona: str, max_length: int) -> EncodedSet:
    """Validate and encode a dataset file (UserError for file-level problems), from the cache when it is there."""
    from trainer_core.data.dataset import check_data_path, load_dataset

    path = check_data_path(path)  # before the cache key reads the file: /dev/zero would be hashed for ever
    cache_file = paths.CACHE_DIR / "encoded" / f"{_key(path, tokenizer, persona, max_length)}.npz"
    if cache_file.is_file():
        try:
            return _load(cache_file)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    builder = _Builder(tokenizer, persona, max_length)
    with builder.encoder:
        report = load_dataset(path, keep=False, on_usable=builder.add)
        first = str(report.errors[0]) if report.errors else ""
        result = builder.result(report.n_rows, report.n_bad_rows, first)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        _save(cache_file, result)
    except OSError:
        pass  # caching is an optimisation; a read-only disk must not stop training
    return result


def _key(path: Path, tokenizer, persona: str, max_length: int) -> str:
    from trainer_core.data.dataset import DEFAULT_MAX_BYTES, source_files

    h = hashlib.sha256()
    meta = [type(tokenizer).__name__, len(tokenizer), getattr(tokenizer, "chat_template", None) or "",
            tokenizer.name_or_path, persona, max_length, IGNORE_INDEX, CACHE_VERSION]
    h.update(json.dumps(meta, ensure_ascii=False).encode())
    for file in source_files(path):  # one file, or a save_to_disk folder's state.json and data files in order
        with open(file, "rb") as f:
            # No further than the size limit: the file was checked, but may grow (load_dataset then refuses it).
            left = DEFAULT_MAX_BYTES + 1
            while left > 0 and (block := f.read(min(1 << 20, left))):
                h.update(block)
                left -= len(block)
    return h.hexdigest()[:32]


def _save(path: Path, s: EncodedSet) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, ids=s.ids, labels=s.labels, offsets=s.offsets, truncated=s.truncated, n_labels=s.n_labels,
                 counts=np.array([s.n_rows, s.n_errors], dtype=np.int64), first_error=np.array(s.first_error))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path) -> EncodedSet:
    with np.load(path, allow_pickle=False) as z:
        n_rows, n_errors = (int(x) for x in z["counts"])
        return EncodedSet(ids=z["ids"], labels=z["labels"], offsets=z["offsets"], truncated=z["truncated"],
                          n_labels=z["n_labels"], n_rows=n_rows, n_errors=n_errors, first_error=str(z["first_error"]))
