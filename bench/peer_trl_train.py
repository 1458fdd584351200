"""TRL's SFTTrainer on the peer benchmark's records (bench/peer_bench.py runs it in TRL's own venv).

    .cache/peer-venvs/trl/bin/python -m deepspeed.launcher.runner --no_local_rank --num_gpus 1 \
        bench/peer_trl_train.py --job job.json

Configured as TRL's SFT docs recommend for chat data: a conversational prompt-completion dataset (the persona as
system turn and the question as the prompt, the answer as the completion), so the loss is on the completion only
(`completion_only_loss`); `packing=True` (TRL's best-fit-decreasing packing, padding-free). Precision and attention
kernel come from job.json when it names them (peer_bench's matched jobs); otherwise fp32 on a CPU, bf16 where the
GPU supports it, and the model's default attention. Every number that defines the job comes from job.json, which
peer_bench writes from our run config. The final model is saved to <output_dir>/final for the shared evaluator.
With a "peft" entry in job.json (peer_bench --methods lora), TRL trains LoRA adapters: SFTTrainer's peft_config, a
peft LoraConfig of exactly those arguments (our adapter's rank, alpha, dropout and targets); final/ is then the
adapter, which the evaluator loads on its base. transformers' Trainer puts the trainable weights in two groups (with
and without weight decay); LoRA's adapters fill only the first, DeepSpeed's ZeRO optimizer drops the empty one, and the
learning-rate scheduler, built over both, failed TRL's first step (`zip() argument 2 is longer than argument 1`), so
the empty group is left out here, as our trainer does (trainer_core/training/trainer.py); nothing else changes.
"""

import argparse
import json
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


class NoEmptyGroupsSFTTrainer(SFTTrainer):
    def create_optimizer(self):
        optimizer = super().create_optimizer()
        if hasattr(optimizer, "param_groups"):  # not accelerate's DummyOptim (a DeepSpeed JSON's own optimizer)
            optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        return optimizer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--job", required=True)
    job = json.loads(Path(p.parse_args().job).read_text(encoding="utf-8"))
    records = json.loads(Path(job["data"]).read_text(encoding="utf-8"))
    rows = [{"prompt": [{"role": "system", "content": job["persona"]},
                        {"role": "user", "content": r["instruction"] + r.get("input", "")}],
             "completion": [{"role": "assistant", "content": r["output"]}]} for r in records]
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    precision = job.get("precision") or ("bf16" if gpu_bf16 else "fp32")
    args = SFTConfig(**job["sft_config"], bf16=precision == "bf16", fp16=precision == "fp16")
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    extra = {"attn_implementation": job["attn_implementation"]} if job.get("attn_implementation") else {}
    model = AutoModelForCausalLM.from_pretrained(
        job["model"], dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32), **extra)
    peft_config, trainer_cls = None, SFTTrainer
    if job.get("peft"):
        from peft import LoraConfig

        peft_config, trainer_cls = LoraConfig(**job["peft"]), NoEmptyGroupsSFTTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          peft_config=peft_config)
    trainer.train()
    trainer.save_model(str(Path(args.output_dir) / "final"))


if __name__ == "__main__":
    main()
