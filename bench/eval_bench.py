"""Persona evaluation cost: one model evaluated on N held-out records plus the probes, batched and one by one.

    .venv/bin/python bench/eval_bench.py [RUN] [--data FILE] [--records 200] [--max-new-tokens 128] [--batch 8]
                                         [--repeat 1]

Prints, for batch size 1 and for --batch, interleaved --repeat times (fastest kept): the wall seconds of the whole
evaluation (generation and answer scoring), replies per second, and the speed-up of batched over one-by-one
generation, measured side by side in this one invocation. RUN is a run directory whose final model is evaluated on
its own held-out split; without RUN the base model of the default config (the starter) is. The sample data holds out
only 14 records: --data FILE (e.g. ../shared/data/huanhuan.json, the tutorial's 3,729 records) holds out --records of
that file instead (split by the run's seed, half of the file at most), for the cost of a full 200-record evaluation.
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

from trainer_core.config.run_config import RunConfig, load_config  # noqa: E402
from trainer_core.evaluation import persona_eval as pe  # noqa: E402
from trainer_core.runs import protocol  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?", help="run directory (default: the starter, untrained)")
    ap.add_argument("--data", type=Path, help="hold out --records records of this dataset instead of the run's split")
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    if args.run is not None:
        cfg = load_config(args.run / protocol.CONFIG)
        [(label, folder)] = pe.models_of(args.run, None)
    else:
        cfg = RunConfig()
        label, folder = pe.BASE, Path(cfg.model.path)
    if args.data is not None:
        # Half the file at most is held out, so the lexicon and style figures still have training answers.
        cfg.data.path, cfg.data.eval_ratio, cfg.data.max_eval_records = str(args.data), 0.5, args.records
    data = pe.held_out(cfg, args.records)
    if len(data.prompts) < args.records:
        print(f"# only {len(data.prompts)} held-out records (asked for {args.records}): pass --data with a larger "
              "dataset", file=sys.stderr)
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
