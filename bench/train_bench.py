"""Training benchmark: the tutorial's recipe against our trainer, in one invocation, on the same records.

    .venv/bin/python bench/train_bench.py              # 400 records, 40 held out, 1 epoch each (about 6-8 min on 2 cores)
    .venv/bin/python bench/train_bench.py --quick      # 60 records, 2 steps each: a smoke check, not a measurement
    .venv/bin/python bench/train_bench.py --ablation   # also our defaults minus each optimisation in turn
    .venv/bin/python bench/train_bench.py --phases     # also ms per step in forward, backward, ZeRO, optimizer
    .venv/bin/python bench/train_bench.py --shape qwen2.5-0.5b  # every recipe on a --shape preset (bench/common.py)

Three real `deepspeed` launches, one after the other:
  baseline   bench/baseline_train.py: the tutorial's process_func, padding collator, micro-batch 1, its ZeRO-2
             CPU-offload JSON, lr 1e-4, full-vocabulary HF loss;
  ours-same  `python -m trainer_core train bench/ours_same.yaml`: our engine with the baseline's hyper-parameters
             (micro-batch 1, no packing, max_length 128, lr 1e-4, ZeRO-2 CPU offload), to isolate engine speed;
  ours       `python -m trainer_core train configs/quickstart.yaml`: our defaults for the starter model, 1 epoch.
The held-out records are the same for all three and scored the same way (bench/common.py). Times are training time
only (from the Trainer's on_train_begin, after DeepSpeed and CPU Adam are built; our in-training evaluations are
subtracted). Nothing here asserts a time: the machine is shared, so only ratios from one invocation mean anything.
MFU (bench/peak_bench.py): model FLOPs of the labelled tokens per second over this machine's measured matmul peak in
the precision our config resolves to here (fp32 on a CPU, as the baseline runs), measured before the first recipe
(or given with --peak); the attention term uses the mean causal context of our encoding of the training records.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (DEFAULT_DATA, EVAL_MAX_LENGTH, SHAPES, data_file, encode_heldout, shape_model,  # noqa: E402
                          write_json)
from bench.peak_bench import mean_label_context, measure_peak, model_shape, recipe_mfu  # noqa: E402
from trainer_core.runs import protocol  # noqa: E402
from trainer_core.common.paths import PROJECT_ROOT, STARTER_MODEL_DIR  # noqa: E402
from trainer_core.common.tailing import read_all_rows  # noqa: E402

PY = sys.executable
QUICKSTART = PROJECT_ROOT / "configs" / "quickstart.yaml"
OURS_SAME = PROJECT_ROOT / "bench" / "ours_same.yaml"
SEED = 42  # train.seed of both our configs: the split below depends on it


def prepare_data(data: Path, work: Path, n_records: int, n_heldout: int,
                 seed: int = SEED) -> tuple[Path, Path, Path]:
    """train.json (baseline), heldout.json, ours.json (train + held-out, ordered so our trainer, run with
    train.seed=seed, holds out exactly the held-out records: it shuffles with random.Random(train.seed) and takes the
    first eval_ratio * n). The held-out records themselves do not depend on the seed."""
    from trainer_core.models.local import load_tokenizer

    records = json.loads(data_file(data).read_text(encoding="utf-8"))[:n_records]
    tok = load_tokenizer(STARTER_MODEL_DIR)  # TRAINER_MODELS_DIR moves it (the GPU check builds it elsewhere)
    # Held-out records must fit in EVAL_MAX_LENGTH, so every recipe scores the whole answer of each.
    fits = [len(e.input_ids) < EVAL_MAX_LENGTH for e in encode_heldout(tok, records)]
    candidates = [i for i, ok in enumerate(fits) if ok]
    held = set(random.Random(0).sample(candidates, n_heldout))
    train = [r for i, r in enumerate(records) if i not in held]
    heldout = [r for i, r in enumerate(records) if i in held]
    wanted = heldout + train  # what our trainer's shuffle must produce
    perm = list(range(len(wanted)))
    random.Random(seed).shuffle(perm)  # shuffled[j] = original[perm[j]]
    ours = [None] * len(wanted)
    for j, src in enumerate(perm):
        ours[src] = wanted[j]
    paths = work / "train.json", work / "heldout.json", work / "ours.json"
    for p, data in zip(paths, (train, heldout, ours)):
        p.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return paths


def env() -> dict[str, str]:
    """The environment our launcher gives its ranks (threads per rank, PYTHONPATH), for both recipes."""
    from trainer_core.config.run_config import RunConfig
    from trainer_core.runs.launch import launch_env

    return launch_env(RunConfig(), has_gpu=False)


def hooks_env(work: Path, name: str, phases: bool, hooks: str | None = None) -> dict[str, str]:
    """The ranks' PYTHONPATH with bench/hooks/<hooks> (a recipe's sitecustomize, e.g. logits_head) and, for --phases,
    bench/hooks/phase_timer, whose sitecustomize times each step's phases."""
    folders = [f for f in (hooks, "phase_timer" if phases else None) if f]
    if not folders:
        return {}
    out = {"PYTHONPATH": os.pathsep.join([*(str(PROJECT_ROOT / "bench" / "hooks" / f) for f in folders), env()["PYTHONPATH"]])}
    if phases:
        out["BENCH_PHASES"] = str(work / "phases" / name)
    return out


def read_phases(work: Path, name: str) -> dict | None:
    path = work / "phases" / name / "phases.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    shutil.rmtree(path.parent)  # the next repetition writes its own
    return data


def run_baseline(work: Path, train: Path, heldout: Path, max_steps: int, env_extra: dict | None = None,
                 model: Path | None = None) -> dict:
    from trainer_core.runs.launch import free_port

    result = work / "baseline.json"
    port = free_port()
    argv = [PY, "-u", "-m", "deepspeed.launcher.runner", "--no_local_rank", "--num_gpus", "1",
            "--master_port", str(port), str(PROJECT_ROOT / "bench" / "baseline_train.py"),
            "--deepspeed", str(PROJECT_ROOT / "bench" / "baseline_ds_config.json"),
            "--output_dir", str(work / "baseline-out"),
            "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
            "--num_train_epochs", "1", "--learning_rate", "1e-4", "--logging_steps", "10",
            # DeepSpeed >= 0.14 refuses WarmupDecayLR with 0 warm-up steps (the tutorial's default): 1 is the least.
            "--warmup_steps", "1",
            # Checkpoints are not training: the tutorial saves every 100 steps, we save in neither recipe.
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--seed", str(SEED),
            "--model_path", str(model or PROJECT_ROOT / "models" / "qwen2-starter"), "--data_path", str(train),
            "--heldout_path", str(heldout), "--result_path", str(result)]
    if max_steps > 0:
        argv += ["--max_steps", str(max_steps)]
    log = work / "baseline.log"
    with open(log, "wb") as out:
        proc = subprocess.run(argv, cwd=PROJECT_ROOT, env={**env(), **(env_extra or {})}, stdout=out,
                              stderr=subprocess.STDOUT)
    # The tutorial's recipe leaves DeepSpeed's 66 MB CPU all-reduce buffer in /dev/shm (our trainer unlinks its own,
    # train.release_shm_workspace); the benchmark cleans up after the baseline rather than change the recipe.
    for leftover in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
        leftover.unlink(missing_ok=True)
    if proc.returncode != 0 or not result.is_file():
        sys.exit(f"baseline failed (exit {proc.returncode}); see {log}:\n{log.read_text(errors='replace')[-3000:]}")
    r = json.loads(result.read_text(encoding="utf-8"))
    if max_steps > 0:
        r["records"] = None  # a partial epoch: records/s would mean nothing
    r["phases"] = read_phases(work, "baseline")
    return r


def machine_peak(given_gflops: float | None) -> tuple[float, str]:
    """(FLOP/s, precision): the matmul peak in the precision our quickstart config resolves to here, --peak or
    measured now, before any recipe runs."""
    from trainer_core.config.hardware import resolve_precision
    from trainer_core.config.run_config import load_config

    import torch

    precision = resolve_precision(load_config(QUICKSTART).train.precision)
    if given_gflops is not None:
        return given_gflops * 1e9, precision
    r = measure_peak(precision, "cuda" if torch.cuda.is_available() else "cpu")
    print(f"matmul peak: {precision} {r['flops_per_s'] / 1e9:.1f} GFLOP/s ({r['what']})", flush=True)
    return r["flops_per_s"], precision


def mfu_inputs(model: Path, train: Path) -> dict:
    """The model's shape (bench/peak_bench.py) and the training records' mean causal context of a labelled token
    as our quickstart config encodes them."""
    from trainer_core.config.run_config import load_config

    cfg = load_config(QUICKSTART)
    records = json.loads(train.read_text(encoding="utf-8"))
    return {**model_shape(model), "ctx": mean_label_context(model, records, cfg.data.persona, cfg.data.max_length)}


def run_ours(work: Path, name: str, config: Path, data: Path, heldout: Path, n_records: int, n_heldout: int,
             sets: list[str], env_extra: dict | None = None, seed: int = SEED) -> dict:
    """Train with our CLI; figures from metrics.jsonl (rank 0), held-out loss re-scored here. `seed` must be the
    one prepare_data ordered `data` for."""
    overrides = [f"data.path={data}", f"data.eval_ratio={n_heldout / n_records!r}", "train.epochs=1",
                 "train.save_steps=0", f"train.seed={seed}", f"name={name}", *sets]
    argv = [PY, "-m", "trainer_core", "train", str(config)]
    for o in overrides:
        argv += ["--set", o]
    e = {**env(), **(env_extra or {}), "TRAINER_RUNS_ROOT": str(work / "runs")}
    proc = subprocess.run(argv, cwd=PROJECT_ROOT, env=e, capture_output=True, text=True)
    run = work / "runs" / name
    if proc.returncode != 0:
        log = (run / protocol.LOG).read_text(errors="replace")[-3000:] if (run / protocol.LOG).is_file() else proc.stderr[-3000:]
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{log}")
    rows = read_all_rows(run / protocol.METRICS)
    # Training time at each row: elapsed since on_train_begin minus the evaluations that ran before it.
    curve, eval_s, steps = [], 0.0, []
    for r in rows:
        if r.get("eval_loss") is not None:
            curve.append((r["step"], r["eval_loss"], r["elapsed_s"] - eval_s - r.get("eval_s", 0.0)))
            eval_s += r.get("eval_s", 0.0)
        if r.get("loss") is not None:
            steps.append((r["step"], r["elapsed_s"] - eval_s, r["label_tokens"], r["tokens"]))
    last = steps[-1]
    final = run / protocol.FINAL
    return {
        "recipe": name,
        "run": str(run),
        "train_time_s": last[1],
        "steps": last[0],
        "label_tokens": last[2],
        "tokens": last[3],
        "records": None if any(o.startswith("train.max_steps=") for o in sets) else n_records - n_heldout,
        "eval_curve": curve,
        "heldout_loss": _rescore(final, heldout),
        "heldout_loss_in_training": curve[-1][1] if curve else None,
        "peak_rss_bytes": max(max(r.get("peak_mem_bytes") or [0]) for r in rows),
        "phases": read_phases(work, name),
    }


def _rescore(model_dir: Path, heldout: Path) -> float:
    """The final model scored by bench/common.py, exactly as the baseline's."""
    code = ("import json,sys; from pathlib import Path; sys.path.insert(0, sys.argv[3]);"
            "from bench.common import encode_heldout, heldout_loss;"
            "from transformers import AutoModelForCausalLM; from trainer_core.models.local import load_tokenizer;"
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = load_tokenizer(sys.argv[1]);"
            "print(heldout_loss(m, encode_heldout(t, json.loads(Path(sys.argv[2]).read_text()))))")
    out = subprocess.run([PY, "-c", code, str(model_dir), str(heldout), str(PROJECT_ROOT)], cwd=PROJECT_ROOT, env=env(),
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def time_to_loss(curve: list, target: float) -> float | None:
    """Training seconds until the first evaluation at or below target (None: never reached)."""
    for _, loss, t in curve:
        if loss <= target:
            return t
    return None


def table(results: list[dict], target: float) -> str:
    head = ["recipe", "steps", "train_s", "label_tok", "label_tok/s", "records/s", "MFU", "heldout_loss",
            "s_to_baseline_loss", "peak_rss_MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        t = r["train_time_s"]
        reach = r["train_time_s"] if r["recipe"] == "baseline" else time_to_loss(r.get("eval_curve", []), target)
        cells = [r["recipe"], r["steps"], f"{t:.1f}", r["label_tokens"], f"{r['label_tokens'] / t:.1f}",
                 "-" if r["records"] is None else f"{r['records'] / t:.2f}",
                 "-" if r.get("mfu") is None else f"{r['mfu']:.2%}", f"{r['heldout_loss']:.4f}",
                 "-" if reach is None else f"{reach:.1f}",
                 f"{r['peak_rss_bytes'] / 2**20:.0f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def phase_table(results: list[dict]) -> str:
    """Milliseconds per optimizer step in each phase (--phases); "between steps" is the training loop outside
    training_step, in-training evaluations excluded."""
    head = ["recipe", "steps", "ms/step", "forward+loss", "backward compute", "ZeRO gradient handling",
            "optimizer step", "rest of the step", "between steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        ph = r.get("phases")
        if not ph:
            continue
        tot = {k: v[0] for k, v in ph["totals"].items()}
        steps = ph["totals"]["training_step"][1]
        fwd, bwd, opt = tot.get("forward_loss", 0.0), tot.get("backward", 0.0), tot.get("optimizer_step", 0.0)
        zero = tot.get("zero_grads", 0.0)  # inside backward
        in_step = tot["training_step"]
        between = ph["window_s"] - in_step - tot.get("evaluate", 0.0)
        per = [(ph["window_s"] - tot.get("evaluate", 0.0)), fwd, bwd - zero, zero, opt, in_step - fwd - bwd - opt,
               between]
        lines.append("| " + " | ".join([r["recipe"], str(steps)] + [f"{1000 * x / steps:.1f}" for x in per]) + " |")
    return "\n".join(lines)


def ratios(results: list[dict], target: float) -> list[str]:
    base = results[0]
    b_tps = base["label_tokens"] / base["train_time_s"]
    out = []
    for r in results[1:]:
        tps = r["label_tokens"] / r["train_time_s"]
        rps = "-" if r["records"] is None or base["records"] is None else \
            f"{(r['records'] / r['train_time_s']) / (base['records'] / base['train_time_s']):.2f}x"
        reach = time_to_loss(r.get("eval_curve", []), target)
        speed = "not reached" if reach is None else f"{base['train_time_s'] / reach:.2f}x"
        out.append(f"{r['recipe']} / baseline: label tokens/s {tps / b_tps:.2f}x, records/s {rps}, "
                   f"time to the baseline's held-out loss {speed}, "
                   f"peak RSS {r['peak_rss_bytes'] / base['peak_rss_bytes']:.2f}x")
    return out


# --ablation: our defaults with one optimisation taken away each, to say what each contributes. Each is (name,
# --set overrides, bench/hooks/<folder> whose sitecustomize the ranks import, or None).
ABLATIONS = [
    ("ours-logits-head", [], "logits_head"),  # logits at labelled positions, plain cross-entropy (head_loss=logits)
    ("ours-no-packing", ["data.packing=false"], None),
    ("ours-micro-1", ["train.micro_batch_size=1"], None),
    ("ours-micro-2", ["train.micro_batch_size=2", "train.learning_rate=3e-3"], None),  # the previous defaults
    ("ours-lr-1e-4", ["train.learning_rate=1e-4"], None),  # the tutorial's learning rate
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="JSON array of alpaca records (default ../shared/data/huanhuan.json)")
    p.add_argument("--records", type=int, default=400, help="first N records of --data (default 400)")
    p.add_argument("--heldout", type=int, default=40, help="of those, held out for evaluation (default 40)")
    p.add_argument("--quick", action="store_true", help="60 records, 2 steps per recipe: a smoke check")
    p.add_argument("--ablation", action="store_true",
                   help="also run our defaults without each optimisation in turn (about 5 more minutes)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every recipe this many times, interleaved, and report each one's fastest run (the "
                        "machine is shared: the fastest run is the one least slowed by others)")
    p.add_argument("--only", default="baseline,ours-same,ours", help="comma-separated recipes to run")
    p.add_argument("--set", action="append", default=[], help="extra --set for the 'ours' run (experiments)")
    p.add_argument("--target", type=float, default=float("nan"),
                   help="held-out loss to reach when the baseline is not run")
    p.add_argument("--phases", action="store_true",
                   help="also time each step's phases (forward+loss, backward, ZeRO gradient handling, optimizer "
                        "step, the loop between steps) through bench/hooks/phase_timer; adds a perf_counter pair per call")
    p.add_argument("--shape", choices=sorted(SHAPES), help="train every recipe on this shape preset (random weights, "
                   "the starter's tokenizer; bench/common.py SHAPES), built once into .cache/shapes/<name>")
    p.add_argument("--peak", type=float, metavar="GFLOPS",
                   help="the matmul peak MFU divides by, in GFLOP/s, instead of measuring it (bench/peak_bench.py)")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (runs, logs)")
    args = p.parse_args(argv)
    data_file(args.data)
    if args.peak is not None and args.peak <= 0:
        p.error(f"--peak must be a positive GFLOP/s figure (got {args.peak})")
    if args.quick:
        args.records, args.heldout = 60, 6
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # --quick proves the recipes run and the tables fill (bench/tests); 2 steps still time a step and the gap after it.
    steps_base, steps_ours = (2, 2) if args.quick else (-1, -1)
    only = set(args.only.split(","))
    model = shape_model(args.shape) if args.shape else STARTER_MODEL_DIR
    peak, precision = machine_peak(args.peak)
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    train, heldout, ours_data = prepare_data(args.data, work, args.records, args.heldout)
    print(f"{args.records} records, {args.heldout} held out; model {args.shape or 'starter'}; work dir {work}",
          flush=True)
    mfu_in = mfu_inputs(model, train)

    common = [f"train.max_steps={steps_ours}"] if steps_ours > 0 else []
    common.append(f"model.path={model}")
    jobs = []
    if "baseline" in only:
        jobs.append(("baseline", lambda: run_baseline(work, train, heldout, steps_base,
                                                      hooks_env(work, "baseline", args.phases), model)))
    if "ours-same" in only:
        jobs.append(("ours-same", lambda: run_ours(work, "ours-same", OURS_SAME, ours_data, heldout, args.records,
                                                   args.heldout, common, hooks_env(work, "ours-same", args.phases))))
    # Ours evaluates after every step: the curve gives the time to the baseline's loss (evaluation time excluded).
    for name, sets, hooks in ([("ours", [], None)] if "ours" in only else []) + (ABLATIONS if args.ablation else []):
        jobs.append((name, lambda name=name, sets=sets, hooks=hooks: run_ours(
            work, name, QUICKSTART, ours_data, heldout, args.records, args.heldout,
            [*common, "train.eval_steps=1", *sets, *args.set], hooks_env(work, name, args.phases, hooks))))
    runs: dict[str, list[dict]] = {name: [] for name, _ in jobs}
    for _ in range(args.repeat):
        for name, fn in jobs:
            t = time.time()
            runs[name].append(fn())
            r = runs[name][-1]
            r.update(recipe_mfu(mfu_in, mfu_in["ctx"], r["label_tokens"], r["train_time_s"], peak), precision=precision)
            shutil.rmtree(work / "runs" / name, ignore_errors=True)  # the next repetition reuses the name
            print(f"{name} done in {time.time() - t:.0f}s wall (training {runs[name][-1]['train_time_s']:.1f}s)",
                  flush=True)
    results = [min(rs, key=lambda r: r["train_time_s"]) for rs in runs.values()]

    target = results[0]["heldout_loss"] if results and results[0]["recipe"] == "baseline" else args.target
    print()
    print(f"machine: {os.cpu_count()} CPU cores (shared); training time only"
          f"{f', fastest of {args.repeat} interleaved runs each' if args.repeat > 1 else ''}; held-out loss over "
          f"{args.heldout} records, per answer token; target = the baseline's final held-out loss {target:.4f}")
    print(f"model {args.shape or 'starter'} ({mfu_in['params'] / 1e6:.1f}M parameters); MFU against the {precision} "
          f"matmul peak {'-' if not peak else f'{peak / 1e9:.1f} GFLOP/s'} (bench/peak_bench.py)")
    print(table(results, target))
    if results and results[0]["recipe"] == "baseline":
        for line in ratios(results, target):
            print(line)
    if args.phases:
        print()
        print("where each optimizer step's time goes (ms per step; training_step = forward+loss + backward + "
              "optimizer step + rest):")
        print(phase_table(results))
    if args.repeat > 1:
        for name, rs in runs.items():
            times = ", ".join(f"{r['train_time_s']:.1f}" for r in rs)
            print(f"{name}: training seconds of each run {times}")
    if args.json:
        write_json(args.json, {"records": args.records, "heldout": args.heldout, "target": target,
                               "shape": args.shape or "starter", "precision": precision, "peak_flops_per_s": peak,
                               "results": results, "runs": runs})
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
