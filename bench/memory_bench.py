"""Memory planner accuracy: predicted (`trainer_core.config.memory.plan_memory`) vs measured peak per rank.

    .venv/bin/python bench/memory_bench.py                          # both models, ZeRO 0-3, +/- offload, 1 and 2 ranks
    .venv/bin/python bench/memory_bench.py --models starter --ranks 1   # a subset
    .venv/bin/python bench/memory_bench.py --methods lora                # LoRA cells (train.method=lora)

Each cell is a real 3-step run of `python -m trainer_core train configs/quickstart.yaml` on the shipped sample data.
Measured: the largest rank's peak resident memory (getrusage ru_maxrss, which the trainer writes to metrics.jsonl as
peak_mem_bytes; on a GPU it would be torch.cuda.max_memory_allocated), and the supervisor's sampled RSS
(resources.jsonl) as a cross-check. "offload" means offload_optimizer=cpu, plus offload_param=cpu at stage 3.
Models: the starter (9.8M parameters, 9.7M of them the tied 152k x 64 embedding) and a random ~100M Qwen2 built
here (hidden 512, 8 layers, same vocabulary, safetensors, the starter's tokenizer).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: trainer_core importable
from trainer_core.common.paths import PROJECT_ROOT  # noqa: E402

from trainer_core.runs import protocol  # noqa: E402
from trainer_core.common.tailing import read_all_rows  # noqa: E402

STARTER = PROJECT_ROOT / "models" / "qwen2-starter"
GOAL = 0.25


def build_100m(dest: Path) -> Path:
    """A random Qwen2 of about 100M parameters with the starter's tokenizer, saved as safetensors."""
    from bench.common import build_random_model

    return build_random_model(dest, {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8,
                                     "num_attention_heads": 8, "num_key_value_heads": 4}, starter=STARTER)


def variants(ranks: list[int], methods: tuple[str, ...] = ("full",)) -> list[dict]:
    out = []
    for method in methods:
        for n in ranks:
            for stage in (0, 1, 2, 3):
                for offload in ((False,) if stage == 0 else (False, True)):
                    out.append({"method": method, "stage": stage, "offload": offload, "ranks": n})
    return out


def measure(work: Path, model: Path, v: dict, name: str) -> dict:
    from trainer_core.config.run_config import load_config
    from trainer_core.config.memory import plan_memory

    sets = [f"model.path={model}", f"deepspeed.stage={v['stage']}",
            f"deepspeed.offload_optimizer={'cpu' if v['offload'] else 'none'}",
            f"deepspeed.offload_param={'cpu' if v['offload'] and v['stage'] == 3 else 'none'}",
            f"placement.num_ranks={v['ranks']}", f"train.method={v['method']}", "train.max_steps=3", "train.save_steps=0", "data.eval_ratio=0",
            f"name={name}"]
    argv = [sys.executable, "-m", "trainer_core", "train", str(PROJECT_ROOT / "configs" / "quickstart.yaml")]
    for s in sets:
        argv += ["--set", s]
    env = {**__import__("os").environ, "TRAINER_RUNS_ROOT": str(work / "runs")}
    proc = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    run = work / "runs" / name
    cfg = load_config(PROJECT_ROOT / "configs" / "quickstart.yaml", sets)
    predicted = plan_memory(cfg).per_rank_device_bytes
    if proc.returncode != 0:
        return {**v, "predicted": predicted, "measured": None, "sampled": None,
                "error": (run / protocol.LOG).read_text(errors="replace")[-800:] if (run / protocol.LOG).exists() else proc.stderr[-800:]}
    peaks = [max(r["peak_mem_bytes"]) for r in read_all_rows(run / protocol.METRICS) if r.get("peak_mem_bytes")]
    sampled = [rk["rss_bytes"] for row in read_all_rows(run / protocol.RESOURCES) for rk in row.get("ranks", [])]
    shutil.rmtree(run / protocol.FINAL, ignore_errors=True)
    return {**v, "predicted": predicted, "measured": max(peaks) if peaks else None,
            "sampled": max(sampled) if sampled else None}


def table(rows: list[dict]) -> str:
    mib = 2**20
    lines = ["| model | method | ZeRO | offload | ranks | predicted MiB | measured MiB | sampled MiB | error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["measured"] is None:
            lines.append(f"| {r['model']} | {r['method']} | {r['stage']} | {'yes' if r['offload'] else 'no'} | "
                         f"{r['ranks']} | {r['predicted'] / mib:.0f} | failed | - | - |")
            continue
        err = (r["predicted"] - r["measured"]) / r["measured"]
        flag = "" if abs(err) <= GOAL else " (outside 25%)"
        lines.append(f"| {r['model']} | {r['method']} | {r['stage']} | {'yes' if r['offload'] else 'no'} | "
                     f"{r['ranks']} | {r['predicted'] / mib:.0f} | {r['measured'] / mib:.0f} | "
                     f"{(r['sampled'] or 0) / mib:.0f} | {err:+.0%}{flag} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="starter,100m")
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--methods", default="full", help="train.method values, comma-separated: full,lora")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    models = {}
    for m in args.models.split(","):
        models[m] = STARTER if m == "starter" else build_100m(work / "qwen2-100m")
    rows = []
    for label, path in models.items():
        for i, v in enumerate(variants([int(x) for x in args.ranks.split(",")],
                                         tuple(args.methods.split(",")))):
            t = time.time()
            r = {"model": label, **measure(work, path, v, f"{label}-{i}")}
            rows.append(r)
            got = "failed" if r["measured"] is None else f"{r['measured'] / 2**20:.0f} MiB"
            print(f"{label} {v['method']} ZeRO-{v['stage']} offload={v['offload']} ranks={v['ranks']}: predicted "
                  f"{r['predicted'] / 2**20:.0f} MiB, measured {got} ({time.time() - t:.0f}s)", flush=True)
    print()
    print(table(rows))
    ok = [r for r in rows if r["measured"]]
    inside = sum(abs(r["predicted"] - r["measured"]) <= GOAL * r["measured"] for r in ok)
    print(f"\n{inside} of {len(ok)} within +/-25%")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
