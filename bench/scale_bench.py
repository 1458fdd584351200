"""Scaling table: time per optimizer step and peak RSS against model size, ranks and sequence length, and data
preparation time and peak RSS against record count.

    nice .venv/bin/python bench/scale_bench.py                         # every series (about 20-30 min on 2 cores)
    nice .venv/bin/python bench/scale_bench.py --only model,length     # some series: model, ranks, length, data
    nice .venv/bin/python bench/scale_bench.py --records 4000,100000   # data series sizes (default 4k, 100k, 1M)

Training series: our trainer (`python -m trainer_core train configs/quickstart.yaml`: ZeRO-2 + CPU offload, fp32 on
a CPU, packing, micro-batch 4) on huanhuan.json, --steps optimizer steps plus one warm-up step whose time is left
out, no evaluation, no checkpoint. Step time is the median gap between consecutive metrics rows (rank 0); peak RSS
is the largest `peak_mem_bytes` any rank reported (VmHWM), and with 2 ranks also their sum. bench/hooks/phase_timer
splits each step into forward+loss, backward compute, ZeRO gradient handling and the optimizer step, so the table
says which term dominates. Series (each varies one thing from the quickstart defaults, max_length 256, 1 rank):
  model   the starter (hidden 64, 2 layers: almost all 152k x 64 embedding), and random Qwen2 models with the
          starter's vocabulary whose bodies (everything but the tied embedding) hold ~50M and ~100M parameters
          (hidden 768, 8 and 16 layers), built in a temporary folder;
  ranks   the starter on 1 and 2 CPU ranks (ZeRO-2 shards optimizer state and gradients across them);
  length  the starter at max_length 256, 1024 and 2048 (rows packed to that length, so tokens per step grow too).
Data series: N generated records (bench/data_bench.py's generator) through `check-data` and through the trainer's
data preparation (`train.build_rows`), each a separate process, wall and CPU seconds and peak RSS.
Nothing here asserts a time; on a shared machine CPU seconds and ratios within one invocation mean most.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_DATA, ROOT, data_file  # noqa: E402
from bench.data_bench import BUILD_ROWS, measure, write_records  # noqa: E402
from bench.train_bench import QUICKSTART, env, phase_table, hooks_env, read_phases  # noqa: E402
from trainer_core.runs import protocol  # noqa: E402

STARTER = ROOT / "models" / "qwen2-starter"
BODIES = {"body-50M": 8, "body-100M": 16}  # layers of hidden 768, intermediate 2048, 12 heads / 4 KV heads


def build_model(dest: Path, layers: int) -> tuple[Path, int]:
    """A random fp32 Qwen2 with the starter's vocabulary and tokenizer; returns (folder, body parameters)."""
    from bench.common import build_random_model, count_params, shape_config

    shape = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": layers, "num_attention_heads": 12,
             "num_key_value_heads": 4}
    build_random_model(dest, shape, starter=STARTER)
    return dest, count_params(shape) - shape_config(shape).vocab_size * 768  # less the tied embedding


def train_point(work: Path, name: str, steps: int, sets: list[str], data: Path) -> dict:
    """One short run of our trainer; figures from its metrics rows and the phase timer. A point the memory planner
    says needs more host memory than is available now is skipped: on a shared machine it would OOM-kill others."""
    import psutil

    from trainer_core.config.memory import plan_memory
    from trainer_core.config.run_config import load_config

    overrides = [f"data.path={data}", "data.eval_ratio=0", f"train.max_steps={steps + 1}", "train.save_steps=0",
                 "train.logging_steps=1", f"name={name}", *sets]
    plan = plan_memory(load_config(QUICKSTART, overrides))
    free = psutil.virtual_memory().available
    if plan.host_bytes > free:
        return {"recipe": name, "error": f"not run: the planner puts it at {plan.host_bytes / 2**30:.1f} GiB of host "
                                         f"memory, {free / 2**30:.1f} GiB was available"}
    argv = [sys.executable, "-m", "trainer_core", "train", str(QUICKSTART)]
    for o in overrides:
        argv += ["--set", o]
    e = {**env(), **hooks_env(work, name, True), "TRAINER_RUNS_ROOT": str(work / "runs")}
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=e, capture_output=True, text=True)
    wall = time.perf_counter() - t
    run = work / "runs" / name
    if proc.returncode != 0:
        log = run / protocol.LOG
        tail = log.read_text(errors="replace")[-2500:] if log.is_file() else proc.stderr[-2500:]
        return {"recipe": name, "error": f"exit {proc.returncode}: {tail}"}
    rows = [json.loads(line) for line in (run / protocol.METRICS).read_text().splitlines() if line.strip()]
    steps_rows = [r for r in rows if r.get("loss") is not None]
    gaps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps_rows, steps_rows[1:])]  # the first step excluded
    peaks = [max(p) for p in zip(*[r["peak_mem_bytes"] for r in rows if r.get("peak_mem_bytes")])]
    shutil.rmtree(run, ignore_errors=True)
    return {"recipe": name, "wall_s": wall, "step_s": statistics.median(gaps) if gaps else None,
            "tokens_per_step": (steps_rows[-1]["tokens"] - steps_rows[0]["tokens"]) / max(len(gaps), 1),
            "peak_rank_mib": max(peaks) / 2**20, "peak_sum_mib": sum(peaks) / 2**20,
            "phases": read_phases(work, name)}


def dominant(result: dict) -> str:
    """The largest term of a step from the phase timer's totals."""
    ph = result.get("phases")
    if not ph:
        return "-"
    tot = {k: v[0] for k, v in ph["totals"].items()}
    terms = {"forward+loss": tot.get("forward_loss", 0.0),
             "backward compute": tot.get("backward", 0.0) - tot.get("zero_grads", 0.0),
             "ZeRO gradient handling": tot.get("zero_grads", 0.0), "optimizer step": tot.get("optimizer_step", 0.0)}
    name = max(terms, key=terms.get)
    return f"{name} ({terms[name] / max(sum(terms.values()), 1e-9):.0%})"


def train_table(results: list[dict]) -> str:
    head = ["point", "s/step", "tokens/step", "tokens/s", "peak RSS/rank MiB", "peak RSS all ranks MiB", "dominant"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['recipe']} | failed: {r['error'].splitlines()[-1][:120]} |")
            continue
        lines.append(f"| {r['recipe']} | {r['step_s']:.2f} | {r['tokens_per_step']:.0f} | "
                     f"{r['tokens_per_step'] / r['step_s']:.0f} | {r['peak_rank_mib']:.0f} | {r['peak_sum_mib']:.0f} "
                     f"| {dominant(r)} |")
    return "\n".join(lines)


def training_series(work: Path, only: set[str], steps: int, data: Path) -> list[dict]:
    points: list[tuple[str, list[str]]] = []
    if "model" in only:
        points.append(("starter", []))
        for name, layers in BODIES.items():
            folder, body = build_model(work / name, layers)
            print(f"{name}: {body / 1e6:.1f}M body parameters ({layers} layers of hidden 768)", flush=True)
            points.append((name, [f"model.path={folder}"]))
    if "ranks" in only:
        points += [("starter", []), ("starter-2-ranks", ["placement.num_ranks=2"])]
    if "length" in only:
        points += [("starter", []), ("starter-len-1024", ["data.max_length=1024"]),
                   ("starter-len-2048", ["data.max_length=2048"])]
    results, done = [], {}
    for name, sets in points:
        if name not in done:  # the starter at the defaults is every series' first point: run it once
            done[name] = train_point(work, name, steps, sets, data)
            r = done[name]
            print(f"{name}: " + (r["error"][-300:] if "error" in r else
                                 f"{r['step_s']:.2f} s/step, peak {r['peak_rank_mib']:.0f} MiB/rank "
                                 f"({r['wall_s']:.0f} s wall in all)"), flush=True)
            results.append(r)
    return results


def data_series(work: Path, sizes: list[int], max_length: int) -> list[str]:
    lines = ["| records | step | wall s | CPU s | peak RSS MiB |", "|---|---|---|---|---|"]
    for n in sizes:
        data = work / f"generated-{n}.jsonl"
        write_records(data, n)
        e = {**os.environ, "TRAINER_CACHE_DIR": str(work / f"cache-{n}")}
        for label, argv in (("check-data", [sys.executable, "-m", "trainer_core", "check-data", str(data),
                                            "--max-length", str(max_length)]),
                            ("train data preparation", [sys.executable, "-c", BUILD_ROWS, str(data), str(max_length)])):
            r = measure(argv, e)
            row = f"| {n:,} | {label} | {r['s']:.1f} | {r['cpu_s']:.1f} | {r['peak_mib']:.0f} |"
            print(row if r["rc"] == 0 else f"{row} exit {r['rc']}: {r['stderr'][-300:]}", flush=True)
            lines.append(row)
        data.unlink()
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="model,ranks,length,data", help="series to run: model, ranks, length, data")
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps per point (after 1 warm-up step)")
    p.add_argument("--records", default="4000,100000,1000000", help="data series sizes, comma-separated")
    p.add_argument("--json", type=Path, help="also write the training figures to this file")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="alpaca records to train on (huanhuan.json)")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    if not only <= {"model", "ranks", "length", "data"}:
        p.error(f"--only: unknown series {sorted(only - {'model', 'ranks', 'length', 'data'})}")
    work = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start; work dir {work}",
          flush=True)
    try:
        results = training_series(work, only, args.steps, data_file(args.data)) if only - {"data"} else []
        lines = data_series(work, [int(x) for x in args.records.split(",")], 256) if "data" in only else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if results:
        print("\n" + train_table(results))
        print("\nms per optimizer step in each phase (bench/hooks/phase_timer):\n" + phase_table(results))
    if lines:
        print("\n" + "\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
