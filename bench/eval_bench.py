"""Persona evaluation cost: one model evaluated on N held-out records plus the probes, batched and one by one.

    .venv/bin/python bench/eval_bench.py RUN [--records 200] [--max-new-tokens 128] [--batch 8] [--repeat 1]

Prints, for batch size 1 and for --batch, interleaved --repeat times (fastest kept): the wall seconds of the whole
evaluation (generation and answer scoring), replies per second, and the speed-up of batched over one-by-one
generation, measured side by side in this one invocation. RUN is a run directory whose final model is evaluated.
Nothing is written to the run (the results are computed, not stored). Measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer_core.config.run_config import load_config  # noqa: E402
from trainer_core.evaluation import persona_eval as pe  # noqa: E402
from trainer_core.runs import protocol  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    cfg = load_config(args.run / protocol.CONFIG)
    [(label, folder)] = pe.models_of(args.run, None)
    data = pe.held_out(cfg, args.records)
    probes = pe.Probes.load(pe.default_probes(cfg.data.persona))
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}; model {folder} ({label}); {len(data.prompts)} held-out records + "
          f"{len(probes.identity)} probes, max_new_tokens {args.max_new_tokens}")
    best: dict[int, float] = {}
    for _ in range(args.repeat):
        for batch in (1, args.batch):
            settings = pe.EvalSettings(max_records=args.records, max_new_tokens=args.max_new_tokens,
                                       batch_size=batch)
            start = time.perf_counter()
            result = pe.evaluate_model(folder, persona=cfg.data.persona, data=data, probes=probes, settings=settings)
            took = time.perf_counter() - start
            best[batch] = min(best.get(batch, took), took)
            replies = result["n_records"] + result["n_probes"]
    print("| batch | seconds | replies/s |")
    print("|---|---|---|")
    for batch, took in best.items():
        print(f"| {batch} | {took:.1f} | {replies / took:.2f} |")
    print(f"batched ({args.batch}) over one by one: {best[1] / best[args.batch]:.2f}x")


if __name__ == "__main__":
    main()
