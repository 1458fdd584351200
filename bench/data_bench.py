"""Data preparation time: load, validate, tokenize, label-mask and pack all of huanhuan.json, cold and cached.

    .venv/bin/python bench/data_bench.py [--file PATH] [--max-length 256]

Cold: an empty cache directory, so every record is tokenized (one batched call of the fast tokenizer) and the
encoding is written to the cache. Cached: the same call again, as a relaunch does; the cache key is a hash of the
records, persona, max_length and tokenizer, so it only hits when nothing that changes the result has changed.
The tokenizer is loaded once beforehand (the trainer loads it anyway, for the model).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["TRAINER_CACHE_DIR"] = tempfile.mkdtemp(prefix="data-bench-cache-")  # before trainer_core.paths loads

from trainer_core.batching import pack_rows  # noqa: E402
from trainer_core.config import DEFAULT_PERSONA  # noqa: E402
from trainer_core.data import load_dataset  # noqa: E402
from trainer_core.models import load_tokenizer  # noqa: E402
from trainer_core.tokenize_cache import encode_cached  # noqa: E402


def prepare(path: Path, tokenizer, max_length: int) -> tuple[int, int, int]:
    report = load_dataset(path)
    encoded = encode_cached(tokenizer, list(report.conversations), persona=DEFAULT_PERSONA, max_length=max_length)
    rows = pack_rows([e for e in encoded if not e.answer_lost], max_length, seed=42)
    return report.n_usable, len(rows), sum(e.n_label_tokens for e in encoded)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--file", type=Path, default=Path("/work/shared/data/huanhuan.json"))
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args(argv)
    tokenizer = load_tokenizer(ROOT / "models" / "qwen2-starter")
    for label in ("cold", "cached"):
        t = time.perf_counter()
        n, rows, labels = prepare(args.file, tokenizer, args.max_length)
        dt = time.perf_counter() - t
        print(f"data prep {label:6s}: {n} records -> {rows} packed rows of <= {args.max_length} tokens, "
              f"{labels} label tokens in {dt:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
