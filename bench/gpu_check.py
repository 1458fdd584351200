"""GPU check (run through bench/gpu_check.sh on one H100, <= 8 minutes): the tutorial's recipe vs ours on a ~0.5B
Qwen2 with random bf16 weights, a fixed number of steps each.

    bash bench/gpu_check.sh            # or: .venv/bin/python bench/gpu_check.py [--steps 60] [--records 2000]
    bash bench/gpu_check.sh --peers    # ours vs TRL vs LLaMA-Factory (bench/peer_bench.py) on the same model

Prints, for each recipe: trained (label) tokens/s, all tokens/s, MFU (6 x params x tokens / time / the card's dense
bf16 peak), peak torch.cuda.max_memory_allocated per rank next to the planner's prediction, and NVML samples (memory
used, utilisation). Recipes:
  baseline    bench/baseline_train.py with the tutorial's ZeRO-2 CPU-offload JSON plus a bf16 block, --bf16, micro 1;
  ours-same   our trainer with the same ZeRO-2 CPU offload, micro 1, no packing, max_length 128;
  ours        our trainer as we would run this model on one GPU: ZeRO-0 (nothing to shard), packing to 512 tokens,
              micro-batch 8.
Nothing is written outside a temporary directory. Exits 2 with a message when no CUDA GPU is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: trainer_core importable
from trainer_core.paths import PROJECT_ROOT  # noqa: E402

STARTER = PROJECT_ROOT / "models" / "qwen2-starter"
HUANHUAN = PROJECT_ROOT.parent / "shared" / "data" / "huanhuan.json"  # the shared folder beside the checkout
# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12),
             ("L40S", 362e12), ("A10", 125e12)]


def load_records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    rows = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines() if line.strip()]
    return [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in rows]


def build_model(dest: Path) -> tuple[Path, int]:
    """Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, 152k vocabulary, tied), random, bf16."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(STARTER)
    config.update({"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                   "num_attention_heads": 14, "num_key_value_heads": 2, "max_window_layers": 24,
                   "layer_types": ["full_attention"] * 24, "max_position_embeddings": 32768})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(dest, safe_serialization=True)
    for f in STARTER.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "generation_config.json":
            shutil.copy(f, dest / f.name)
    return dest, params


class NvmlSampler:
    """Memory used and utilisation of GPU 0 every 0.5 s, in a thread (the baseline has no supervisor to do it)."""

    def __init__(self):
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.samples: list[tuple[float, int, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            mem = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
            util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            self.samples.append((time.time(), int(mem.used), int(util.gpu)))
            self.stop.wait(0.5)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def nvml_summary(samples: list[tuple[float, int, int]]) -> str:
    if not samples:
        return "no NVML samples"
    busy = [u for _, _, u in samples if u > 0]
    return (f"{len(samples)} NVML samples: max used {max(m for _, m, _ in samples) / 2**30:.1f} GiB, "
            f"mean util {sum(busy) / max(len(busy), 1):.0f}% over busy samples")


def run_baseline(work: Path, model: Path, train: Path, heldout: Path, steps: int) -> dict:
    from trainer_core.runs.launch import free_port

    ds = json.loads((PROJECT_ROOT / "bench" / "baseline_ds_config.json").read_text())
    ds["bf16"] = {"enabled": "auto"}  # the precision this card supports; the tutorial's JSON only has fp16
    (work / "baseline_ds.json").write_text(json.dumps(ds))
    result = work / "baseline.json"
    argv = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", "--no_local_rank", "--num_gpus", "1",
            "--master_port", str(free_port()), str(PROJECT_ROOT / "bench" / "baseline_train.py"),
            "--deepspeed", str(work / "baseline_ds.json"), "--output_dir", str(work / "baseline-out"),
            "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-4",
            "--warmup_steps", "1", "--max_steps", str(steps), "--bf16", "true", "--logging_steps", "10",
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
            "--model_path", str(model), "--data_path", str(train), "--heldout_path", str(heldout),
            "--result_path", str(result)]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with NvmlSampler() as nvml, open(work / "baseline.log", "wb") as log:
        proc = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"baseline failed; see {work / 'baseline.log'}:\n{(work / 'baseline.log').read_text()[-3000:]}")
    r = json.loads(result.read_text())
    r.update(nvml=nvml_summary(nvml.samples), peak_per_rank=[r["peak_cuda_bytes"]])
    return r


def run_ours(work: Path, name: str, sets: list[str]) -> dict:
    from trainer_core.runs import protocol as rd
    from trainer_core.runs.tailing import read_all_rows

    argv = [sys.executable, "-m", "trainer_core", "train", str(PROJECT_ROOT / "configs" / "quickstart.yaml")]
    for s in [*sets, f"name={name}"]:
        argv += ["--set", s]
    env = {**os.environ, "TRAINER_RUNS_ROOT": str(work / "runs")}
    proc = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    run = work / "runs" / name
    if proc.returncode != 0:
        log = run / rd.LOG
        sys.exit(f"{name} failed:\n{(log.read_text() if log.exists() else proc.stderr)[-3000:]}")
    rows = [r for r in read_all_rows(run / rd.METRICS) if r.get("loss") is not None]
    gpus = [(row["time"], g["used_bytes"], g["util_pct"]) for row in read_all_rows(run / rd.RESOURCES)
            for g in row.get("gpus", []) if g["index"] == 0]
    last = rows[-1]
    return {"train_time_s": last["elapsed_s"], "steps": last["step"], "label_tokens": last["label_tokens"],
            "tokens": last["tokens"], "peak_per_rank": last["peak_mem_bytes"], "nvml": nvml_summary(gpus),
            "train_loss_last": last["loss"]}


def planned(sets: list[str]) -> int:
    from trainer_core.config.run_config import load_config
    from trainer_core.config.memory import plan_memory

    return plan_memory(load_config(PROJECT_ROOT / "configs" / "quickstart.yaml", sets)).per_rank_device_bytes


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per recipe (default 60)")
    p.add_argument("--records", type=int, default=2000)
    sample = PROJECT_ROOT / "data" / "sample_zhenhuan.jsonl"
    p.add_argument("--data", type=Path, default=HUANHUAN if HUANHUAN.is_file() else sample,
                   help="alpaca records, .json or .jsonl (default huanhuan.json, else the shipped sample)")
    p.add_argument("--build-model", type=Path, metavar="DIR",
                   help="only write the random 0.5B-class bf16 Qwen2 (with the starter's tokenizer) to DIR and exit; "
                        "gpu_check.sh --peers trains it with bench/peer_bench.py")
    args = p.parse_args(argv)
    if args.build_model:
        _, n_params = build_model(args.build_model)
        print(f"{args.build_model}: {n_params / 1e6:.0f}M parameters", flush=True)
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch; this check needs one (an H100).", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16 if k in name), None)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    t0 = time.time()
    model, n_params = build_model(work / "qwen2-0.5b")
    records = load_records(args.data)[:args.records]
    (work / "train.json").write_text(json.dumps(records[40:], ensure_ascii=False))
    (work / "heldout.json").write_text(json.dumps(records[:40], ensure_ascii=False))
    print(f"{name}: model {n_params / 1e6:.0f}M parameters built in {time.time() - t0:.0f}s; work dir {work}", flush=True)

    common = [f"model.path={model}", f"data.path={work / 'train.json'}", "data.eval_ratio=0",
              f"train.max_steps={args.steps}", "train.save_steps=0", "train.logging_steps=5"]
    same = [*common, "data.packing=false", "data.max_length=128", "train.micro_batch_size=1",
            "train.learning_rate=1e-4", "deepspeed.stage=2", "deepspeed.offload_optimizer=cpu"]
    ours = [*common, "data.max_length=512", "train.micro_batch_size=8", "train.learning_rate=1e-4",
            "deepspeed.stage=0", "deepspeed.offload_optimizer=none"]
    results = {}
    for label, fn, plan_sets in (
            ("baseline", lambda: run_baseline(work, model, work / "train.json", work / "heldout.json", args.steps), same),
            ("ours-same", lambda: run_ours(work, "ours-same", same), same),
            ("ours", lambda: run_ours(work, "ours", ours), ours)):
        t = time.time()
        results[label] = {**fn(), "planned": planned(plan_sets)}
        print(f"{label} done in {time.time() - t:.0f}s wall", flush=True)

    print(f"\n{name}, {n_params / 1e6:.0f}M-parameter Qwen2 (random, bf16), {args.steps} steps each; training time only")
    print("| recipe | label tok/s | tok/s | MFU | peak alloc per rank GiB | planner GiB | NVML |")
    print("|---|---|---|---|---|---|---|")
    for label, r in results.items():
        t = r["train_time_s"]
        tps = r["tokens"] / t
        mfu = f"{6 * n_params * tps / peak:.1%}" if peak else "n/a (unknown card)"
        peaks = ", ".join(f"{b / 2**30:.2f}" for b in r["peak_per_rank"] if b)
        print(f"| {label} | {r['label_tokens'] / t:.0f} | {tps:.0f} | {mfu} | {peaks} | {r['planned'] / 2**30:.2f} | "
              f"{r['nvml']} |")
    base = results["baseline"]
    for label in ("ours-same", "ours"):
        r = results[label]
        print(f"{label} / baseline: label tokens/s "
              f"{(r['label_tokens'] / r['train_time_s']) / (base['label_tokens'] / base['train_time_s']):.2f}x")
    print(f"total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
