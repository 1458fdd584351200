"""Encoded datasets cached on disk by content hash, so relaunching a run does not tokenize again.

The key covers everything that changes the result: the conversations, persona, max_length, the tokenizer's
vocabulary size, chat template and class. Stored as .npz (no pickle), written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

from trainer_core import paths
from trainer_core.chat_format import Encoded, encode_conversations


def _key(tokenizer, conversations, persona: str, max_length: int) -> str:
    h = hashlib.sha256()
    meta = [type(tokenizer).__name__, len(tokenizer), getattr(tokenizer, "chat_template", None) or "",
            tokenizer.name_or_path, persona, max_length, 3]
    h.update(json.dumps(meta, ensure_ascii=False).encode())
    h.update(json.dumps(conversations, ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()[:32]


def encode_cached(tokenizer, conversations, *, persona: str, max_length: int) -> list[Encoded]:
    if not conversations:
        return []
    cache = paths.CACHE_DIR / "tokenized"
    path = cache / f"{_key(tokenizer, conversations, persona, max_length)}.npz"
    if path.is_file():
        try:
            return _load(path)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    encoded = encode_conversations(tokenizer, conversations, persona=persona, max_length=max_length)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _save(path, encoded)
    except OSError:
        pass  # caching is an optimisation; a read-only disk must not stop training
    return encoded


def _save(path, encoded: list[Encoded]) -> None:
    lengths = np.array([len(e.input_ids) for e in encoded], dtype=np.int64)
    ids = np.concatenate([np.asarray(e.input_ids, dtype=np.int64) for e in encoded])
    labels = np.concatenate([np.asarray(e.labels, dtype=np.int64) for e in encoded])
    flags = np.array([[e.truncated, e.answer_lost] for e in encoded], dtype=bool)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, lengths=lengths, ids=ids, labels=labels, flags=flags)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path) -> list[Encoded]:
    with np.load(path, allow_pickle=False) as z:
        lengths, ids, labels, flags = z["lengths"], z["ids"], z["labels"], z["flags"]
    out, start = [], 0
    for n, (trunc, lost) in zip(lengths.tolist(), flags.tolist()):
        lab = labels[start:start + n].tolist()
        out.append(Encoded(input_ids=ids[start:start + n].tolist(), labels=lab, truncated=bool(trunc),
                           answer_lost=bool(lost), n_label_tokens=sum(1 for x in lab if x != -100)))
        start += n
    return out
