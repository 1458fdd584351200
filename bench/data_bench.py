"""Data preparation: time (and, at scale, peak memory) to validate, measure and encode a dataset.

    .venv/bin/python bench/data_bench.py [--data PATH] [--max-length 256]      huanhuan.json, cold and cached
    .venv/bin/python bench/data_bench.py --scale 1000000 [--max-length 256]    generated records, each step in
                                                                               its own process, peak RSS measured

Default mode: all of huanhuan.json through `encode_file` (load, validate, tokenize in batches, label-mask) and the
trainer's packing, once with an empty cache directory and once from the cache (keyed by a hash of the file's
bytes, persona, max_length and tokenizer), as a relaunch does. The tokenizer is loaded once beforehand.

Scale mode: writes N short generated records (a .jsonl in a temporary folder, deleted afterwards), then runs
`check-data` and the trainer's data preparation (`train.build_rows`: encode, split, pack) as separate processes,
printing each one's wall time, CPU time and peak RSS (getrusage of the child, read by a fresh wrapper process so no other
child's peak can leak in). The goal is under 1.5 GB each; time is printed, not judged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: trainer_core importable
os.environ.setdefault("TRAINER_CACHE_DIR", tempfile.mkdtemp(prefix="data-bench-cache-"))  # before paths loads
from bench.common import DEFAULT_DATA, data_file  # noqa: E402
from trainer_core.common.paths import PROJECT_ROOT  # noqa: E402

WORDS = "皇上 娘娘 臣妾 本宫 御花园 碎玉轩 甄嬛 华妃 太后 今日 明日 赏花 请安 奉茶".split()

# Run one step in a child and report its peak RSS: this wrapper process has no other children.
MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "s": time.perf_counter() - t, "stdout": proc.stdout[-2000:],
                  "stderr": proc.stderr[-2000:], "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_mib": usage.ru_maxrss / 1024}))
"""

BUILD_ROWS = """
import sys
from trainer_core.config.run_config import load_config
from trainer_core.models.local import load_tokenizer
from trainer_core.training.train import build_rows
cfg = load_config("configs/quickstart.yaml", ["data.path=" + sys.argv[1], "data.max_length=" + sys.argv[2],
                                              "data.eval_ratio=0.01"])
tok = load_tokenizer(cfg.model.path)
train, evaluation = build_rows(cfg, tok, lambda line: print(line, flush=True))
print("rows", len(train), len(evaluation) if evaluation else 0)
"""


def write_records(path: Path, n: int, seed: int = 0) -> None:
    """N distinct short alpaca records (a question with its number, a two-word answer), one per line."""
    rnd = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            q = "".join(rnd.choice(WORDS) for _ in range(2)) + str(i)
            a = "".join(rnd.choice(WORDS) for _ in range(2))
            f.write(json.dumps({"instruction": q, "output": a}, ensure_ascii=False) + "\n")


def measure(argv: list[str], env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, *argv], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout)


def scale(n: int, max_length: int) -> int:
    folder = Path(tempfile.mkdtemp(prefix="data-bench-scale-"))
    try:
        data = folder / f"generated-{n}.jsonl"
        t = time.perf_counter()
        write_records(data, n)
        print(f"generated {n:,} records ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s",
              flush=True)
        env = {**os.environ, "TRAINER_CACHE_DIR": str(folder / "cache")}
        steps = {
            "check-data": [sys.executable, "-m", "trainer_core", "check-data", str(data), "--max-length",
                           str(max_length)],
            "train data preparation": [sys.executable, "-c", BUILD_ROWS, str(data), str(max_length)],
        }
        for label, argv in steps.items():
            r = measure(argv, env)
            tail = (r["stdout"].strip().splitlines() or [""])[-1]
            # CPU seconds too: on a shared machine they are what the step would take on a core of its own.
            print(f"{label}: exit {r['rc']}, {r['s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
                  f"peak RSS {r['peak_mib']:.0f} MiB | {tail}", flush=True)
            if r["rc"] != 0:
                print(r["stderr"], file=sys.stderr)
                return 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="dataset file (default ../shared/data/huanhuan.json)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--scale", type=int, default=0, metavar="N", help="generate N records and measure at scale")
    args = p.parse_args(argv)
    if args.scale:
        return scale(args.scale, args.max_length)
    data_file(args.data)

    from trainer_core.data.batching import first_fit_decreasing
    from trainer_core.config.run_config import DEFAULT_PERSONA
    from trainer_core.data.encoded_set import encode_file
    from trainer_core.models.local import load_tokenizer

    tokenizer = load_tokenizer(PROJECT_ROOT / "models" / "qwen2-starter")
    for label in ("cold", "cached"):
        t = time.perf_counter()
        enc = encode_file(args.data, tokenizer, persona=DEFAULT_PERSONA, max_length=args.max_length)
        keep = [i for i in range(len(enc)) if enc.n_labels[i]]
        rows = first_fit_decreasing(enc.lengths[keep].tolist(), args.max_length)
        dt = time.perf_counter() - t
        print(f"data prep {label:6s}: {len(enc)} records -> {len(rows)} packed rows of <= {args.max_length} tokens, "
              f"{int(enc.n_labels.sum())} label tokens in {dt:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
