"""The tutorial's recipe (../shared/reference/seed.md), reimplemented faithfully as the benchmark's baseline.

Started by bench/train_bench.py through DeepSpeed's launcher, like the tutorial's train.sh:

    python -m deepspeed.launcher.runner --no_local_rank --num_gpus 1 bench/baseline_train.py \
        --deepspeed DS.json --output_dir OUT --per_device_train_batch_size 1 --learning_rate 1e-4 ... \
        --model_path models/qwen2-starter --data_path train.json --heldout_path heldout.json --result_path r.json

Kept from the tutorial: process_func's hand-built ChatML strings with its label quirks (the prompt is .strip()ped,
so no newline before `<|im_start|>assistant`; the header and the pad token are trained), MAX_LENGTH 128,
`DataCollatorForSeq2Seq(padding=True)`, the plain HF Trainer loss over full-vocabulary logits, CPU Adam loaded up
front, its ZeRO-2 CPU-offload JSON. Changed only where this machine or our packages force it, each noted below.
"""

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, HfArgumentParser,  # noqa: E402
                          Trainer, TrainerCallback, TrainingArguments)

import deepspeed  # noqa: E402

from bench.common import encode_heldout, heldout_loss, peak_rss_bytes, write_json  # noqa: E402
from trainer_core.config.run_config import DEFAULT_PERSONA  # noqa: E402

deepspeed.ops.op_builder.CPUAdamBuilder().load()


@dataclass
class FinetuneArguments:
    model_path: str = field(default="models/qwen2-starter")
    data_path: str = field(default="")
    heldout_path: str = field(default="")
    result_path: str = field(default="")
    # The tutorial's English text is a machine translation of the Chinese original; we use the original, which is
    # also our default persona, so both recipes see the same system turn.
    persona: str = field(default=DEFAULT_PERSONA)


def process_func(example):
    MAX_LENGTH = 128
    input_ids, attention_mask, labels = [], [], []
    instruction = tokenizer("\n".join(["<|im_start|>system", finetune_args.persona + "<|im_end|>" + "\n<|im_start|>user\n"
                                       + example["instruction"] + example["input"] + "<|im_end|>\n"]).strip(),
                            add_special_tokens=False)
    response = tokenizer("<|im_start|>assistant\n" + example["output"] + "<|im_end|>\n", add_special_tokens=False)
    input_ids = instruction["input_ids"] + response["input_ids"] + [tokenizer.pad_token_id]
    attention_mask = instruction["attention_mask"] + response["attention_mask"] + [1]
    labels = [-100] * len(instruction["input_ids"]) + response["input_ids"] + [tokenizer.pad_token_id]
    if len(input_ids) > MAX_LENGTH:
        input_ids = input_ids[:MAX_LENGTH]
        attention_mask = attention_mask[:MAX_LENGTH]
        labels = labels[:MAX_LENGTH]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class CountingTrainer(Trainer):
    """The plain Trainer; only counts the tokens it trains on (the loss is untouched)."""

    label_tokens = 0
    tokens = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.label_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        self.tokens += int(inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)


class Clock(TrainerCallback):
    """Training time only: from on_train_begin (after DeepSpeed and CPU Adam are set up) to each step's end."""

    def __init__(self):
        self.t0 = None
        self.steps = []

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.time()

    def on_step_end(self, args, state, control, **kw):
        self.steps.append((state.global_step, time.time() - self.t0))


if "__main__" == __name__:
    finetune_args, training_args = HfArgumentParser((FinetuneArguments, TrainingArguments)).parse_args_into_dataclasses()

    df = pd.read_json(finetune_args.data_path)
    # The tutorial wraps the frame in datasets.Dataset and maps process_func; datasets is not installed here and a
    # list of the same dicts is what the Trainer and the collator see either way.
    records = df.to_dict("records")
    # use_fast=False: the starter model ships the fast tokenizer only (same Qwen BPE ids).
    tokenizer = AutoTokenizer.from_pretrained(finetune_args.model_path, trust_remote_code=True)
    tokenizer.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # Qwen-7B-Chat's eod_id
    tokenized_id = [process_func(r) for r in records]

    # The tutorial loads torch.half onto the GPU. On a CPU there is no fp16 training path, so fp32 (fp16 "auto"
    # resolves off); on a GPU (bench/gpu_check.py) the precision the card supports, passed as --bf16/--fp16.
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if training_args.bf16 else torch.half
        device_map = {"": int(os.environ.get("LOCAL_RANK") or 0)}
    else:
        dtype, device_map = torch.float32, {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(finetune_args.model_path, trust_remote_code=True, dtype=dtype,
                                                 device_map=device_map)

    clock = Clock()
    trainer = CountingTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized_id,
        data_collator=DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True),
        callbacks=[clock],
    )
    trainer.train()
    train_time = clock.steps[-1][1] if clock.steps else 0.0

    if int(os.environ.get("RANK", 0)) == 0:
        heldout = encode_heldout(tokenizer, pd.read_json(finetune_args.heldout_path).to_dict("records"),
                                 finetune_args.persona)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        write_json(Path(finetune_args.result_path), {
            "recipe": "baseline",
            "train_time_s": train_time,
            "steps": trainer.state.global_step,
            "records": len(tokenized_id),
            "label_tokens": trainer.label_tokens,
            "tokens": trainer.tokens,
            "answer_tokens": sum(len(tokenizer(r["output"] + "<|im_end|>", add_special_tokens=False)["input_ids"])
                                 for r in records),
            "step_times": clock.steps,
            "train_loss_last": losses[-1] if losses else None,
            "heldout_loss": heldout_loss(model, heldout),
            "peak_rss_bytes": peak_rss_bytes(),
            "peak_cuda_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        })
