"""A smaller dataset cut from another: the first N or a seeded random N of its usable records, optionally without
exact duplicates, written as a new .jsonl under ``data/uploads`` (the source file is never touched).

Records are written as the source holds them (same format and fields), one per line. Only usable records are
considered: a record validation leaves out would be left out of training anyway. The source is streamed: a random
sample reads it twice (count, then write) and holds one bit per record, never the records themselves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer_core.common import paths
from trainer_core.data.dataset import modified_time, scan_dataset
from trainer_core.data.uploads import atomic_file, safe_stem
from trainer_core.common.errors import UserError


@dataclass(frozen=True)
class Subset:
    """What a cut did."""

    path: Path
    """The new .jsonl file."""
    n_kept: int
    """Records written."""
    n_of: int
    """Usable records in the source the choice was made from (after duplicates were removed, if asked)."""
    n_duplicates: int
    """Records left out as exact repeats of an earlier one (0 unless dedupe was asked)."""


def write_subset(source, *, first: int | None = None, sample: int | None = None, seed: int = 0,
                 dedupe: bool = False, out_dir: Path | None = None) -> Subset:
    """Write the first ``first`` or a random ``sample`` (with ``seed``) of the usable records of ``source``, or all
    of them when neither is given, leaving out exact duplicates when ``dedupe``. UserError for a count below 1."""
    source = Path(source)
    if first is not None and sample is not None:
        raise ValueError("give first or sample, not both")
    n = first if first is not None else sample
    if n is not None and n < 1:
        raise UserError("data.subset_count", "the number of records to keep must be at least 1 (got {n})", n=n)
    out_dir = Path(out_dir or paths.UPLOADS_DIR)
    target = out_dir / _name(source, first=first, sample=sample, seed=seed, dedupe=dedupe)
    keep = None  # which candidates (usable, and not a removed duplicate) to write, by their order among candidates
    if sample is not None:
        total = sum(1 for _ in _candidates(source, dedupe))
        keep = np.zeros(total, dtype=bool)
        keep[np.random.default_rng(seed).choice(total, size=min(sample, total), replace=False)] = True
    written = seen = removed = 0
    with atomic_file(target) as f:
        for usable in scan_dataset(source):
            if dedupe and usable.duplicate_of is not None:
                removed += 1
                continue
            seen += 1
            if (first is not None and written >= first) or (keep is not None and not keep[seen - 1]):
                continue
            f.write(_line(usable.record, usable.row, source))
            written += 1
    if written == 0:
        target.unlink()
        raise UserError("data.subset_empty", "{path}: has no usable records to keep", path=source)
    return Subset(target, written, seen, removed)


def _line(record: dict, row: int, source: Path) -> bytes:
    try:  # a Parquet float column may hold NaN, which JSON has no way to write
        return json.dumps(record, ensure_ascii=False, allow_nan=False).encode() + b"\n"
    except ValueError:
        raise UserError("data.subset_not_json", "{path}: row {row} holds NaN or Infinity, which a .jsonl file cannot "
                        "hold; replace it with null or a number", path=source, row=row) from None


def _candidates(source: Path, dedupe: bool):
    """The records a cut chooses from, in file order."""
    return (u for u in scan_dataset(source) if not (dedupe and u.duplicate_of is not None))


def _name(source: Path, *, first, sample, seed, dedupe) -> str:
    """``<source stem>-<what was done>-<8 hex>.jsonl``; the hash is of the source (path, modification time) and the
    choice, so the same cut of the same file lands on the same file and different cuts never overwrite each other."""
    what = [f"first{first}"] if first is not None else [f"random{sample}-seed{seed}"] if sample is not None else []
    what += ["dedup"] if dedupe else []
    key = json.dumps([str(source.resolve()), modified_time(source), first, sample, seed, dedupe])
    stem = safe_stem(source.name.rsplit(".", 1)[0] if source.is_file() else source.name)[:60]
    return f"{stem}-{'-'.join(what) or 'all'}-{hashlib.sha256(key.encode()).hexdigest()[:8]}.jsonl"
