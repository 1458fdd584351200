"""Peer benchmark: our trainer against TRL's SFTTrainer and LLaMA-Factory's CLI, in one invocation, same job.

    .venv/bin/python bench/peer_bench.py                 # 200 huanhuan records, 20 held out, 1 epoch each
    .venv/bin/python bench/peer_bench.py --repeat 3      # each recipe 3 times, interleaved; the fastest run is kept
    .venv/bin/python bench/peer_bench.py --only ours,trl # a subset
    .venv/bin/python bench/peer_bench.py --phases        # also where each recipe's optimizer step goes
    .venv/bin/python bench/peer_bench.py --model DIR     # another model with the starter's tokenizer (gpu_check.sh)
    .venv/bin/python bench/peer_bench.py --seed 7        # another training seed, the same for every recipe
    .venv/bin/python bench/peer_bench.py --seeds 42,1,2  # the whole job once per seed, then the spread over seeds
    .venv/bin/python bench/peer_bench.py --dump DIR      # also every recipe's batches, lr and setup, step by step
    .venv/bin/python bench/peer_bench.py --set deepspeed.offload_optimizer=none  # a run-config override of the job
    .venv/bin/python bench/peer_bench.py --methods full,lora --only ours,trl  # LoRA vs full, ours vs TRL + peft
    .venv/bin/python bench/peer_bench.py --shape qwen2.5-0.5b   # a --shape preset (bench/common.py SHAPES), built once
    .venv/bin/python bench/peer_bench.py --matched checkpointing-on  # or checkpointing-off (default), defaults

Every recipe trains the same model (the starter) on the same training records with the same ZeRO-2 + CPU-offload
DeepSpeed JSON (the one `trainer_core plan` resolves for configs/quickstart.yaml), epochs, micro-batch x
accumulation, max length, learning rate, schedule, warm-up, weight decay, clipping and seed, all read from our run
config (peer_settings):
  ours          `python -m trainer_core train configs/quickstart.yaml` (as bench/train_bench.py runs it);
  trl           bench/peer_trl_train.py: TRL's SFTTrainer as its docs recommend for chat data (prompt-completion,
                completion-only loss, packing), fp32 on a CPU;
  llamafactory  `llamafactory-cli train peer.yaml`: full fine-tuning, template qwen, neat packing (no attention
                across records), prompt not trained.
The peers run in their own venvs (bench/peer_venvs.py, created on first use under .cache/peer-venvs/, never in
requirements.txt), all three under DeepSpeed's launcher with one CPU rank. Held-out records (the split of
train_bench) are scored by bench/common.py for every recipe: ours by its in-training evaluation on the same records
(as train_bench), the peers by bench/hooks/peer_probe at every step, and every final model once more after training.
Label tokens: the positions whose next-token label is not -100 in the batches each trainer fed its loss (ours:
answer tokens and their <|im_end|>). Times are training time only, from on_train_begin, evaluations subtracted.
Nothing here asserts a time; a peer that fails is reported with its error and the others still run.

--methods full,lora runs every recipe of --only that has a LoRA form (ours, trl) a second time with LoRA adapters
(recipes ours-lora, trl-lora), the job otherwise the same (data, epochs, max length, schedule, DeepSpeed JSON, seed):
ours with `train.method=lora` and our `lora` section's defaults, TRL's SFTTrainer with a peft LoraConfig of the same
rank, alpha, dropout and target modules (every linear layer of the model's blocks, found by our
config/lora_targets.py), both at one LoRA learning rate (--lora-lr; default 10x the full job's, the ratio "LoRA
Without Regret" (Thinking Machines, 2025) found best across model sizes) and ours' gradient checkpointing setting.
The table then also gives each recipe's LoRA / full ratios. Held-out loss of an adapter is scored on base + adapter.
Matched jobs (--matched, job_settings): every setting that trades memory for speed or changes the arithmetic is the
same for every recipe: gradient checkpointing (on or off, reentrant as the HF default), precision (our
train.precision as it resolves here: fp32 on a CPU), attention kernel (the one our trainer picks: SDPA, or
flash_attention_2 for packed rows on a GPU that runs it) and the DeepSpeed JSON. `--matched defaults` leaves each
tool its own defaults instead (TRL's SFTConfig and LLaMA-Factory turn gradient checkpointing on, ours leaves it off;
the DeepSpeed JSON stays shared). The table's header and the JSON say which; the peers' probe records what each
actually ran with (checkpointing, attention, weight dtype).
MFU (bench/peak_bench.py): model FLOPs of the trained tokens per second over this machine's matmul peak in the
recipe's precision, measured once before the first recipe (or given with --peak).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_DATA, ROOT, SHAPES, data_file, encode_heldout, shape_model, write_json  # noqa: E402
from bench.peak_bench import mean_label_context, model_shape, peaks, recipe_mfu, training_dtypes  # noqa: E402
from bench.train_bench import (QUICKSTART, SEED, _rescore, env, phase_table, hooks_env, prepare_data,  # noqa: E402
                                read_phases, run_ours, time_to_loss)
from trainer_core.config.run_config import load_config  # noqa: E402

RECIPES = ("ours", "trl", "llamafactory", "ours-newline", "ours-bf16")
DEFAULT_RECIPES = RECIPES[:4]
METHODS = ("full", "lora")
LORA_RECIPES = ("ours", "trl")  # the recipes with a LoRA form (--methods lora): "<recipe>-lora"
LORA_LR_FACTOR = 10  # --lora-lr default: this times the full job's rate
# ours-newline: ours, also training the `\n` after each answer's <|im_end|> as both peers do (bench/hooks/newline_label); an
# ablation of one of the two differences between ours and TRL that the loss comparison leaves, not a default.
# ours-bf16: ours in bf16 (train.precision=bf16) whatever the job's precision: what the machine's bf16 gives ours
# beside the same job in its own precision (on a CPU with AVX-512-BF16 or AMX, a 2-3x matmul peak); not matched.


MATCHED = ("checkpointing-off", "checkpointing-on", "defaults")


def gpu_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def job_config(epochs: int, model: Path | None = None, seed: int = SEED, sets: list[str] | None = None):
    """Our run config for the job every recipe runs: the quickstart defaults at `epochs` epochs (on `model`, the
    starter unless given), trained with `seed`, with the `sets` (--set KEY=VALUE) overrides."""
    return load_config(QUICKSTART, [f"train.epochs={epochs}", f"train.seed={seed}",
                                    *([f"model.path={model}"] if model else []), *(sets or [])])


def job_settings(cfg, matched: str) -> dict[str, dict]:
    """Per recipe, what it runs with on the settings that trade memory for speed or change the arithmetic:
    gradient_checkpointing, precision, attention (the kernel ours picks; None: the model default, SDPA). Matched:
    one value for all, ours as our trainer resolves it here. defaults: each tool's own (None where the tool decides
    it at load time)."""
    from trainer_core.config.hardware import resolve_precision

    precision = resolve_precision(cfg.train.precision)
    attention = None
    if cfg.data.packing and _has_cuda():  # the trainer's own decision (training/train.py)
        import torch

        from trainer_core.training.train import flash_attn_installed, packed_attention, supports_flash_attention

        attention = packed_attention(True, precision, torch.cuda.get_device_capability(), flash_attn_installed(),
                                     supports_flash_attention(cfg))
    ours = {"gradient_checkpointing": cfg.train.gradient_checkpointing, "precision": precision, "attention": attention}
    if matched == "defaults":
        peer_precision = "bf16" if gpu_bf16() else "fp32"  # what the peers' job files chose before --matched
        # TRL's SFTConfig and LLaMA-Factory (disable_gradient_checkpointing: false) turn checkpointing on.
        return {"ours": ours, "ours-newline": ours, "ours-bf16": {**ours, "precision": "bf16"},
                "trl": {"gradient_checkpointing": True, "precision": peer_precision, "attention": None},
                "llamafactory": {"gradient_checkpointing": True, "precision": peer_precision, "attention": "auto"}}
    same = {**ours, "gradient_checkpointing": matched == "checkpointing-on"}
    return {**{r: dict(same) for r in RECIPES}, "ours-bf16": {**same, "precision": "bf16"}}


def matched_sets(settings: dict) -> list[str]:
    """Our --set overrides for our recipes' entry of job_settings."""
    return [f"train.gradient_checkpointing={str(settings['gradient_checkpointing']).lower()}",
            f"train.precision={settings['precision']}"]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def model_dir(cfg) -> Path:
    """The run config's model folder as an absolute path: the peers run in the work directory, where a relative
    path would be taken for a Hugging Face Hub id."""
    return ROOT / cfg.model.path


def ds_config(cfg) -> dict:
    """The DeepSpeed JSON our trainer resolves for cfg ("auto" left for the HF Trainer to fill from its arguments)."""
    from trainer_core.config.ds_config import build_ds_config
    return build_ds_config(cfg)


def peer_settings(cfg, work: Path, data: Path, dataset_dir: Path, ds_json: Path,
                  matched: str = "checkpointing-off") -> dict:
    """Each peer's own configuration, every job-defining number taken from our run config cfg; at a matched
    `matched`, also every memory-for-speed and arithmetic setting (job_settings)."""
    t = cfg.train
    # The HF TrainingArguments both peers take under the same names.
    hf_args = {
        "per_device_train_batch_size": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_ratio": t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "deepspeed": str(ds_json),
    }
    trl = {
        "output_dir": str(work / "trl-out"),
        "max_length": cfg.data.max_length,
        "packing": cfg.data.packing,
        "completion_only_loss": True,
        **hf_args,
        "num_train_epochs": t.epochs,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }
    llamafactory = {
        "model_name_or_path": str(model_dir(cfg)),
        "trust_remote_code": False,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "huanhuan",
        "dataset_dir": str(dataset_dir),
        "template": "qwen",
        "cutoff_len": cfg.data.max_length,
        "packing": cfg.data.packing,
        # Packing without attention across records (a block-diagonal mask), as ours and TRL's position-id packing.
        "neat_packing": cfg.data.packing,
        "train_on_prompt": False,
        "overwrite_cache": True,
        "output_dir": str(work / "llamafactory-out"),
        "overwrite_output_dir": True,
        **hf_args,
        "num_train_epochs": float(t.epochs),
        "bf16": gpu_bf16(),  # fp32 on a CPU, bf16 where the GPU has it (as TRL's job script decides)
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "plot_loss": False,
    }
    # LLaMA-Factory reads alpaca records through dataset_info.json; the persona goes in as each record's system turn.
    dataset_info = {"huanhuan": {"file_name": str(data), "formatting": "alpaca",
                                 "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                             "system": "system"}}}
    trl_model = {}  # what peer_trl_train.py loads the model with (precision, attention)
    if matched != "defaults":
        m = job_settings(cfg, matched)
        gc, precision, attention = (m["trl"][k] for k in ("gradient_checkpointing", "precision", "attention"))
        # Reentrant checkpointing: the HF default that ours (TrainingArguments' kwargs None) and LLaMA-Factory use.
        trl.update(gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": True})
        trl_model = {"precision": precision, "attn_implementation": attention or "sdpa"}
        llamafactory.update(disable_gradient_checkpointing=not gc, use_reentrant_gc=True, bf16=precision == "bf16",
                            fp16=precision == "fp16", flash_attn="fa2" if attention == "flash_attention_2" else "sdpa")
    if cfg.train.method == "lora":
        # TRL + peft with our adapter: the same rank, alpha, dropout and targets (checkpointing as the job says above).
        trl["peft"] = lora_settings(cfg)
    return {"trl": trl, "llamafactory": llamafactory, "dataset_info": dataset_info, "trl_model": trl_model}


def lora_settings(cfg) -> dict:
    """peft LoraConfig arguments equal to the adapter our trainer puts on cfg's model (models/adapters.py): targets
    from config/lora_targets.py on the model built on the meta device, bias off, causal LM."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainer_core.config.lora_targets import target_modules

    la = cfg.lora
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir(cfg)))
    return {"r": la.rank, "lora_alpha": la.alpha, "lora_dropout": la.dropout,
            "target_modules": target_modules(model, la.target_modules), "use_rslora": la.use_rslora,
            "use_dora": la.use_dora, "modules_to_save": list(la.modules_to_save) or None, "bias": "none",
            "task_type": "CAUSAL_LM"}


def write_peer_inputs(cfg, work: Path, train: Path, heldout: Path, matched: str = "checkpointing-off") -> dict:
    """DeepSpeed JSON, TRL's job file, LLaMA-Factory's YAML and dataset, the probe's encoded held-out set."""
    import yaml
    from trainer_core.models.local import load_tokenizer

    ds_json = work / "ds_config.json"
    write_json(ds_json, ds_config(cfg))
    lf_dir = work / "llamafactory-data"
    lf_dir.mkdir()
    records = json.loads(train.read_text(encoding="utf-8"))
    lf_data = lf_dir / "train.json"
    write_json(lf_data, [{**r, "system": cfg.data.persona} for r in records])
    s = peer_settings(cfg, work, lf_data, lf_dir, ds_json, matched)
    write_json(lf_dir / "dataset_info.json", s["dataset_info"])
    (work / "llamafactory.yaml").write_text(yaml.safe_dump(s["llamafactory"], allow_unicode=True), encoding="utf-8")
    trl = dict(s["trl"])
    peft = trl.pop("peft", None)  # not an SFTConfig argument: peer_trl_train.py makes a LoraConfig of it
    write_json(work / "trl-job.json", {"data": str(train), "persona": cfg.data.persona, "model": str(model_dir(cfg)),
                                       "sft_config": trl, **({"peft": peft} if peft else {}), **s["trl_model"]})
    probe = work / "probe"
    probe.mkdir()
    encoded = encode_heldout(load_tokenizer(model_dir(cfg)), json.loads(heldout.read_text(encoding="utf-8")),
                             persona=cfg.data.persona)
    write_json(probe / "heldout.json", [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    write_json(probe / "probe.json", {"eval_steps": 1, "root": str(ROOT)})
    return s


def run_peer(peer: str, work: Path, heldout: Path, n_train: int, epochs: int, phases: bool = False,
             dump: Path | None = None) -> dict:
    """One peer under DeepSpeed's launcher in its own venv, with bench/hooks/peer_probe on its PYTHONPATH (and the phase
    timer loaded by it when `phases`, bench/hooks/step_dump when `dump`)."""
    from bench.peer_venvs import ensure
    from trainer_core.runs.launch import free_port

    py = ensure(peer)
    out = work / f"{peer}-out"
    shutil.rmtree(out, ignore_errors=True)
    (work / "probe" / "result.json").unlink(missing_ok=True)
    if peer == "trl":
        script = [str(ROOT / "bench" / "peer_trl_train.py"), "--job", str(work / "trl-job.json")]
    else:
        script = [str(py.parent / "llamafactory-cli"), "train", str(work / "llamafactory.yaml")]
    port = free_port()
    argv = [str(py), "-u", "-m", "deepspeed.launcher.runner", "--no_local_rank", "--num_gpus", "1",
            "--master_port", str(port), *script]
    # Each venv JIT-builds DeepSpeed's CPU ops from its own copy of the sources: a folder of its own keeps the
    # builds apart from ours (a shared one would be rebuilt at every switch of recipe). A PEER_PYTHON that is our own
    # interpreter (the GPU check's venv) has our DeepSpeed, so it shares our folder.
    own = os.environ.get("PEER_PYTHON") == sys.executable and os.environ.get("TORCH_EXTENSIONS_DIR")
    e = {**env(), "BENCH_PEER_PROBE": str(work / "probe"), "DISABLE_VERSION_CHECK": "1",
         "TORCH_EXTENSIONS_DIR": own or str(py.parent.parent / "torch_extensions"),
         "PYTHONPATH": os.pathsep.join([str(ROOT / "bench" / "hooks" / "peer_probe"), env()["PYTHONPATH"]])}
    if phases:
        e["BENCH_PHASES"] = str(work / "phases" / peer)
    if dump:
        e["BENCH_STEP_DUMP"] = str(dump)
    log = work / f"{peer}.log"
    with open(log, "wb") as f:
        proc = subprocess.run(argv, cwd=work, env=e, stdout=f, stderr=subprocess.STDOUT)
    for leftover in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
        leftover.unlink(missing_ok=True)  # DeepSpeed's CPU all-reduce buffer, which only our trainer unlinks itself
    result = work / "probe" / "result.json"
    final = out / ("final" if peer == "trl" else "")
    if proc.returncode != 0 or not result.is_file():
        return {"recipe": peer, "error": last_error(log.read_text(errors="replace")), "log": str(log)}
    r = json.loads(result.read_text(encoding="utf-8"))
    ph = read_phases(work, peer)
    if ph:  # the probe's held-out scoring ran inside the loop: not training, as Trainer.evaluate is not for ours
        ph["totals"].setdefault("evaluate", [0.0, 0])[0] += r.get("probe_eval_s", 0.0)
    return {"recipe": peer, **r, "records": n_train * epochs, "heldout_loss": _rescore(final, heldout),
            "heldout_loss_in_training": r["eval_curve"][-1][1], "phases": ph}


def last_error(log: str) -> str:
    """The exception line of a failed launch's log (the last line naming an Error), else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line]
    return (errors or lines or ["no output"])[-1][:400]


def job_cell(r: dict) -> str:
    """What a recipe ran with: the probe's record for the peers (as_run), the job's settings for ours."""
    j = {**(r.get("settings") or {}), **(r.get("as_run") or {})}
    if not j:
        return "-"
    ckpt = {True: "ckpt on", False: "ckpt off"}.get(j.get("gradient_checkpointing"), "ckpt ?")
    return f"{ckpt}, {j.get('precision') or '?'}, {j.get('attention') or 'sdpa'}"


def table(results: list[dict], target: float | None) -> str:
    head = ["recipe", "job", "steps", "train_s", "label_tok", "label_tok/s", "records/s", "MFU", "heldout_loss",
            "s_to_target", "peak_rss_MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['recipe']} | failed: {r['error']} |" + " |" * (len(head) - 2))
            continue
        t = r["train_time_s"]
        reach = None if target is None else time_to_loss(r["eval_curve"], target)
        m = r.get("mfu")
        cells = [r["recipe"], job_cell(r), r["steps"], f"{t:.1f}", r["label_tokens"], f"{r['label_tokens'] / t:.1f}",
                 f"{r['records'] / t:.2f}", "-" if m is None else f"{m:.2%}", f"{r['heldout_loss']:.4f}",
                 "never" if reach is None else f"{reach:.1f}",
                 f"{r['peak_rss_bytes'] / 2**20:.0f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=200, help="first N records of huanhuan.json (default 200)")
    p.add_argument("--heldout", type=int, default=20, help="of those, held out for evaluation (default 20)")
    p.add_argument("--epochs", type=int, default=1, help="epochs for every recipe (default 1)")
    p.add_argument("--repeat", type=int, default=1, help="run every recipe K times, interleaved; keep the fastest")
    p.add_argument("--only", default=",".join(DEFAULT_RECIPES),
                   help=f"comma-separated recipes: {', '.join(RECIPES)} (default {','.join(DEFAULT_RECIPES)})")
    p.add_argument("--model", type=Path, help="model folder every recipe trains (default: the starter); it must "
                   "use the starter's tokenizer, which splits the records and encodes the held-out set")
    p.add_argument("--shape", choices=sorted(SHAPES), help="instead of --model: a shape preset with random weights "
                   "and the starter's tokenizer (bench/common.py SHAPES: qwen2.5-0.5b ~494M, qwen2.5-0.5b-6l ~226M, "
                   "starter), built once into .cache/shapes/<name> and reused")
    p.add_argument("--matched", choices=MATCHED, default="checkpointing-off",
                   help="checkpointing-off (default) / checkpointing-on: every recipe runs the same gradient "
                        "checkpointing, precision, attention kernel and DeepSpeed JSON; defaults: each tool keeps "
                        "its own (TRL and LLaMA-Factory checkpoint, ours does not)")
    p.add_argument("--peak", type=float, metavar="GFLOPS",
                   help="the matmul peak MFU divides by, in GFLOP/s, instead of measuring it (bench/peak_bench.py)")
    p.add_argument("--phases", action="store_true",
                   help="also split each recipe's optimizer step into forward+loss, backward, ZeRO gradient "
                        "handling and optimizer step (bench/hooks/phase_timer, loaded into the peers by bench/hooks/peer_probe)")
    p.add_argument("--seed", type=int, default=SEED,
                   help=f"training seed of every recipe (data order, packing order; default {SEED}); the held-out "
                        "records do not change with it")
    p.add_argument("--seeds", help="comma-separated training seeds: the whole job once per seed in one invocation, "
                   "then a summary over the seeds (mean and spread of each recipe's held-out loss, how often and how "
                   "fast each reaches the slowest recipe's final loss); replaces --seed")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="JSON array of alpaca records (default ../shared/data/huanhuan.json)")
    p.add_argument("--dump", type=Path, help="write what each recipe trains here, step by step (bench/hooks/step_dump: "
                   "<recipe>-<repeat>/steps.jsonl with every batch, lr and loss, setup.json, logs.jsonl)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a run-config override of every recipe's job, e.g. deepspeed.offload_optimizer=none (the GPU "
                        "check: DeepSpeed's CPU Adam would first compile for minutes in each venv)")
    p.add_argument("--methods", default="full", help="comma-separated: full, lora (default full); lora runs "
                   "the recipes of --only with a LoRA form (" + ", ".join(LORA_RECIPES) + ") with adapters too, as "
                   "<recipe>-lora")
    p.add_argument("--lora-lr", type=float, help=f"learning rate of every LoRA recipe (default {LORA_LR_FACTOR}x the "
                   "full job's train.learning_rate)")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (runs, logs, peer configs)")
    args = p.parse_args(argv)
    if args.shape and args.model:
        p.error("--shape and --model: give one (--shape builds its own model folder)")
    if args.peak is not None and args.peak <= 0:
        p.error(f"--peak must be a positive GFLOP/s figure (got {args.peak})")
    args.only = [r for r in args.only.split(",") if r]
    unknown = sorted(set(args.only) - set(RECIPES))
    if unknown:
        p.error(f"--only: unknown recipe {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    try:
        args.seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds: each seed once (got {','.join(map(str, args.seeds))})")
    args.methods = [m for m in args.methods.split(",") if m]
    if not args.methods or set(args.methods) - set(METHODS) or len(set(args.methods)) != len(args.methods):
        p.error(f"--methods: expected full and/or lora, each once (got {','.join(args.methods) or 'nothing'})")
    if "lora" in args.methods and not set(args.only) & set(LORA_RECIPES):
        p.error(f"--methods lora: none of --only has a LoRA form; add {' or '.join(LORA_RECIPES)}")
    if args.lora_lr is not None and not 0 < args.lora_lr < 1:
        p.error(f"--lora-lr must be > 0 and < 1 (got {args.lora_lr:g})")
    if args.dump and "ours-newline" in args.only:  # a process imports one sitecustomize: one hook folder each
        p.error("--dump cannot record ours-newline (its labels hook and the step dump are both a sitecustomize); "
                "leave it out of --only or drop --dump")
    if args.repeat < 1 or args.epochs < 1:
        p.error("--repeat and --epochs must be at least 1")
    data_file(args.data)
    if not 0 < args.heldout < args.records:
        p.error(f"--heldout must be between 1 and --records - 1 (got {args.heldout} of {args.records})")
    return args


def lora_sets(args, cfg) -> list[str]:
    """The run-config overrides that make the job a LoRA job: the method and the LoRA learning rate."""
    lr = args.lora_lr if args.lora_lr is not None else LORA_LR_FACTOR * cfg.train.learning_rate
    return ["train.method=lora", f"train.learning_rate={lr!r}"]


def recipe_names(args) -> list[str]:
    """The recipes run, in order: --only's, then the LoRA forms of those that have one (with --methods lora)."""
    names = list(args.only) if "full" in args.methods else []
    if "lora" in args.methods:
        names += [f"{r}-lora" for r in args.only if r in LORA_RECIPES]
    return names


def run_all(args, work: Path) -> dict[str, list[dict]]:
    """Every chosen recipe, --repeat times, interleaved so a change in the machine's load hits them alike."""
    train, heldout, ours_data = prepare_data(args.data, work, args.records, args.heldout, args.seed)
    cfg = job_config(args.epochs, args.model, args.seed, args.set)
    write_peer_inputs(cfg, work, train, heldout, args.matched)
    settings = job_settings(cfg, args.matched)
    ours_matched = [] if args.matched == "defaults" else matched_sets(settings["ours"])
    lora_work, lora_job = work / "lora", []
    if "lora" in args.methods:  # the peers' LoRA job files, beside the full job's
        lora_work.mkdir()
        lora_job = lora_sets(args, cfg)
        lora_cfg = job_config(args.epochs, args.model, args.seed, [*args.set, *lora_job])
        write_peer_inputs(lora_cfg, lora_work, train, heldout, args.matched)
        print(f"LoRA recipes: learning rate {lora_cfg.train.learning_rate:g}, rank {lora_cfg.lora.rank}, alpha "
              f"{lora_cfg.lora.alpha:g}, dropout {lora_cfg.lora.dropout:g}, targets "
              f"{', '.join(lora_settings(lora_cfg)['target_modules'])}", flush=True)
    n_train = args.records - args.heldout
    print(f"{args.records} records, {args.heldout} held out, {args.epochs} epoch(s), seed {args.seed}; work dir "
          f"{work}", flush=True)
    rep = [0]

    def dump(name: str) -> Path | None:
        return args.dump / f"{name}-{rep[0] + 1}" if args.dump else None

    def ours(name: str = "ours", hooks: str | None = None, method_sets: tuple[str, ...] = ()):
        sets = ["train.eval_steps=1", f"train.epochs={args.epochs}", f"model.path={cfg.model.path}", *args.set,
                *ours_matched, *method_sets]
        hooks = hooks or ("step_dump" if args.dump else None)  # parse_args refuses --dump with another hook
        e = hooks_env(work, name, args.phases, hooks)
        if hooks == "step_dump":
            e["BENCH_STEP_DUMP"] = str(dump(name))
        r = run_ours(work, name, QUICKSTART, ours_data, heldout, args.records, args.heldout, sets, e, args.seed)
        r["records"] = n_train * args.epochs
        return r

    def peer_lora(peer: str) -> dict:
        r = run_peer(peer, lora_work, heldout, n_train, args.epochs, args.phases, dump(f"{peer}-lora"))
        return {**r, "recipe": f"{peer}-lora"}

    jobs = {"ours": ours, "ours-newline": lambda: ours("ours-newline", "newline_label"),
            "ours-bf16": lambda: ours("ours-bf16", method_sets=("train.precision=bf16",)),
            **{peer: (lambda peer=peer: run_peer(peer, work, heldout, n_train, args.epochs, args.phases, dump(peer)))
               for peer in ("trl", "llamafactory")},
            "ours-lora": lambda: ours("ours-lora", method_sets=tuple(lora_job)), "trl-lora": lambda: peer_lora("trl")}
    mfu_in = mfu_inputs(cfg, train)
    runs: dict[str, list[dict]] = {name: [] for name in recipe_names(args)}
    for rep[0] in range(args.repeat):
        for name in runs:
            t = time.time()
            runs[name].append(jobs[name]())
            shutil.rmtree(work / "runs" / name, ignore_errors=True)
            r = runs[name][-1]
            r["settings"] = settings[name.removesuffix("-lora")]
            # 6 x parameters counts the weights' gradient products, which a LoRA step skips for the frozen base:
            # MFU is given for full fine-tuning only.
            if "error" not in r and not name.endswith("-lora"):
                r.update(recipe_mfu(mfu_in, mfu_in["ctx"], r["label_tokens"], r["train_time_s"],
                                    args.peaks.get(settings[name]["precision"])))
            what = f"failed: {r['error']}" if "error" in r else f"training {r['train_time_s']:.1f}s"
            print(f"{name} done in {time.time() - t:.0f}s wall ({what})", flush=True)
    return runs


def mfu_inputs(cfg, train: Path) -> dict:
    """The model's shape and the training records' mean causal context of a labelled token (bench/peak_bench.py)."""
    records = json.loads(train.read_text(encoding="utf-8"))
    return {**model_shape(model_dir(cfg)),
            "ctx": mean_label_context(model_dir(cfg), records, cfg.data.persona, cfg.data.max_length)}


def measure_peaks(args) -> dict[str, float]:
    """FLOP/s by precision: --peak for every precision, else this machine's measured peak in each (before any
    recipe runs, on every core)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.peak is not None:
        return {d: args.peak * 1e9 for d in ("fp32", "bf16", "fp16")}
    out = {d: r["flops_per_s"] for d, r in peaks([d for d in training_dtypes(device) if d != "tf32"], device).items()}
    print("matmul peak: " + ", ".join(f"{d} {v / 1e9:.1f} GFLOP/s" for d, v in out.items())
          + " (bench/peak_bench.py)", flush=True)
    return out


def job_line(args, results: list[dict]) -> str:
    """The table's label: matched (and how) or each tool's defaults."""
    if args.matched == "defaults":
        return ("job: each tool's own defaults (not matched): TRL and LLaMA-Factory checkpoint gradients, ours does "
                "not; one DeepSpeed JSON")
    s = next((r["settings"] for r in results if r.get("settings")), {})
    return (f"job: matched, gradient checkpointing {'on' if s.get('gradient_checkpointing') else 'off'} for every "
            f"recipe, precision {s.get('precision')}, attention {s.get('attention') or 'sdpa'}, one DeepSpeed JSON")


def report(args, runs: dict[str, list[dict]]) -> dict:
    """Print one seed's table (and phases, repeats); return its figures."""
    results = []
    for rs in runs.values():
        ok = [r for r in rs if "error" not in r]
        results.append(min(ok, key=lambda r: r["train_time_s"]) if ok else rs[-1])
    done = [r for r in results if "error" not in r]
    slowest = max(done, key=lambda r: r["train_time_s"]) if done else None
    target = slowest["eval_curve"][-1][1] if slowest else None
    print()
    print(f"machine: {os.cpu_count()} CPU cores (shared); training time only"
          f"{f', fastest of {args.repeat} interleaved runs each' if args.repeat > 1 else ''}; held-out loss over "
          f"{args.heldout} records per answer token (bench/common.py); target = the slowest recipe's "
          f"({slowest['recipe'] if slowest else '-'}) final held-out loss "
          f"{'-' if target is None else f'{target:.4f}'}")
    print(job_line(args, results) + "; MFU = (6 x matmul parameters + attention) FLOPs per trained token x label "
          "tokens/s / matmul peak in the recipe's precision (bench/peak_bench.py)")
    print(table(results, target))
    if ratios := ratio_lines(done):
        print(ratios)
    if args.phases:
        print("\nwhere each optimizer step's time goes (ms per step, bench/hooks/phase_timer):")
        print(phase_table([r for r in done if r.get("phases")]))
    if args.repeat > 1:
        for name, rs in runs.items():
            print(f"{name}: training seconds of each run "
                  + ", ".join("failed" if "error" in r else f"{r['train_time_s']:.1f}" for r in rs))
    return {"records": args.records, "heldout": args.heldout, "epochs": args.epochs, "seed": args.seed,
            "matched": args.matched, "job": job_line(args, results), "shape": args.shape or str(args.model or "starter"),
            "peak_flops_per_s": args.peaks, "target": target, "target_recipe": slowest["recipe"] if slowest else None, "results": results,
            "runs": runs}


def ratio_lines(done: list[dict]) -> str:
    """Ours against each other recipe of the same method (ours / trl, ours-lora / trl-lora), then each recipe's
    LoRA form against its full one (ours-lora / ours, trl-lora / trl)."""
    by = {r["recipe"]: r for r in done}

    def rate(r: dict, key: str) -> float:
        return r[key] / r["train_time_s"]

    lines = []
    for r in done:
        lora = r["recipe"].endswith("-lora")
        ref = by.get("ours-lora" if lora else "ours")
        if ref is None or r is ref or (lora and r["recipe"] == "ours-lora"):
            continue
        lines.append(f"{ref['recipe']} / {r['recipe']}: records/s {rate(ref, 'records') / rate(r, 'records'):.2f}x, "
                     f"label tokens/s {rate(ref, 'label_tokens') / rate(r, 'label_tokens'):.2f}x, "
                     f"peak RSS {ref['peak_rss_bytes'] / r['peak_rss_bytes']:.2f}x")
    for r in done:
        full = by.get(r["recipe"].removesuffix("-lora")) if r["recipe"].endswith("-lora") else None
        if full is None:
            continue
        lines.append(f"{r['recipe']} / {full['recipe']} (LoRA / full): records/s "
                     f"{rate(r, 'records') / rate(full, 'records'):.2f}x, peak RSS "
                     f"{r['peak_rss_bytes'] / full['peak_rss_bytes']:.2f}x, held-out loss {r['heldout_loss']:.4f} vs "
                     f"{full['heldout_loss']:.4f}")
    return "\n".join(lines)


def sweep_summary(reports: list[dict]) -> str:
    """Over several seeds: each recipe's held-out loss per seed, mean and spread, and the time to each seed's
    target (the slowest recipe's final loss); records/s against ours per seed. Only seeds where every recipe ran."""
    import statistics

    reports = [r for r in reports if r["target"] is not None and all("error" not in x for x in r["results"])]
    if not reports:
        return "no seed where every recipe ran"
    names = [x["recipe"] for x in reports[0]["results"]]
    ratios = {n: [] for n in names if n != "ours"} if "ours" in names else {}  # records/s against ours, if it ran
    head = ["seed", "target (recipe)", *(f"{n} loss / s to target" for n in names),
            *(f"records/s ours / {n}" for n in ratios)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    losses = {n: [] for n in names}
    reached = {n: [] for n in names}
    for rep in reports:
        by = {x["recipe"]: x for x in rep["results"]}
        cells = [str(rep["seed"]), f"{rep['target']:.3f} ({rep['target_recipe']})"]
        for n in names:
            x = by[n]
            t = time_to_loss(x["eval_curve"], rep["target"])
            losses[n].append(x["heldout_loss"])
            reached[n].append(t)
            cells.append(f"{x['heldout_loss']:.3f} / {'never' if t is None else f'{t:.1f}'}")
        for n in ratios:
            ratios[n].append((by["ours"]["records"] / by["ours"]["train_time_s"])
                             / (by[n]["records"] / by[n]["train_time_s"]))
            cells.append(f"{ratios[n][-1]:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    out = ["\nover seeds:", *lines, ""]
    for n in names:
        times = [t for t in reached[n] if t is not None]
        sd = statistics.stdev(losses[n]) if len(losses[n]) > 1 else 0.0
        out.append(f"{n}: held-out loss mean {statistics.mean(losses[n]):.4f}, sd {sd:.4f}, range "
                   f"{min(losses[n]):.3f}-{max(losses[n]):.3f}; reached its seed's target in {len(times)} of "
                   f"{len(reports)} seeds" + (f" (median {statistics.median(times):.1f} s)" if times else ""))
    for n, rs in ratios.items():
        out.append(f"records/s ours / {n}: median {statistics.median(rs):.2f}x, range {min(rs):.2f}-{max(rs):.2f}x")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.shape:
        args.model = shape_model(args.shape)
    args.peaks = measure_peaks(args)
    reports = []
    for seed in args.seeds:
        args.seed = seed
        work = Path(tempfile.mkdtemp(prefix=f"peer-bench-{seed}-"))
        try:
            reports.append(report(args, run_all(args, work)))
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        if args.json:  # after every seed, so a long sweep that is stopped keeps what it measured
            write_json(args.json, reports[0] if len(args.seeds) == 1 else {"seeds": reports})
    if len(args.seeds) > 1:
        print(sweep_summary(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
