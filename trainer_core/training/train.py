"""Training entry point that the `deepspeed` launcher starts on every rank.

    deepspeed --no_local_rank --num_gpus N --module trainer_core.training.train --run-dir runs/<name> [--supervised]

Everything it needs is in the run directory (config.yaml, ds_config.json); everything it reports goes back there.
Normally started by `python -m trainer_core train` / the dashboard through the supervisor (`--supervised`: the
supervisor records how the run ended), or by hand / by Slurm's launch_node.sh (the ranks record it themselves).
Read top to bottom, `main` is the recipe: set the rank up, build the trainer, train, finish.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trainer_core.config.hardware import resolve_precision
from trainer_core.config.run_config import RunConfig, load_config
from trainer_core.data.batching import ArrayRows, Collator, first_fit_decreasing
from trainer_core.common.errors import UserError, text
from trainer_core.runs import protocol
from trainer_core.runs.state import record_end
from trainer_core.training import ranks
from trainer_core.training.loss import HEAD_LOSSES
from trainer_core.training.ranks import LOST, StoppedStarting, barrier, global_rank, log_rank0, startup_step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume-from", default="", help="checkpoint directory to resume from")
    parser.add_argument("--supervised", action="store_true",
                        help="started by the run's supervisor, which holds the device locks and records the end")
    parser.add_argument("--head-loss", choices=HEAD_LOSSES, default="auto",
                        help="auto: the blockwise head loss where it is exact, else logits; logits: always logits")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = args.run_dir.resolve()
    cfg = load_config(run / protocol.CONFIG)
    try:
        setup_rank(run, args.supervised)
        trainer, tokenizer, callback = build_trainer(run, cfg, args.head_loss)
        if args.resume_from:
            log_rank0(f"resuming from {args.resume_from}")
        startup_step(run, protocol.PHASE_INITIALISING)  # the callback checks once more right before the first step
        trainer.train(resume_from_checkpoint=args.resume_from or None)
    except StoppedStarting:
        # Nothing trained, nothing saved: the supervisor (or rank 0 below) records `stopped`.
        log_rank0("stopped on request during start-up, before training a step")
        if not args.supervised and global_rank() == 0:
            record_end(run, 0)
        return 0
    return finish(run, cfg, trainer, tokenizer, callback, args.supervised)


def setup_rank(run: Path, supervised: bool) -> None:
    """Tie the rank to the processes above it, join the process group, and on rank 0 start the heartbeat."""
    ranks.share_fate(run, supervised)  # its lock descriptors stay open until this process exits
    startup_step(run, protocol.PHASE_JOINING)
    ranks.init_distributed()
    if global_rank() == 0:
        protocol.start_heartbeat(run)  # before loading the model, which can take minutes for a 7B
        if not supervised:
            # Launched by hand or by Slurm: a stop request left by an earlier attempt is not meant for this one (the
            # supervisor clears it itself before a supervised start).
            (run / protocol.CONTROL).unlink(missing_ok=True)


def training_arguments(cfg: RunConfig, run: Path, precision: str):
    """The HF TrainingArguments for this run: every value from the run config, DeepSpeed's from ds_config.json."""
    from transformers import TrainingArguments

    t = cfg.train
    return TrainingArguments(
        output_dir=str(run / protocol.CHECKPOINTS),
        deepspeed=json.loads((run / protocol.DS_CONFIG).read_text(encoding="utf-8")),
        accelerator_config={"use_configured_state": True},
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_ratio=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # 16-bit on a CPU: without use_cpu the Trainer refuses bf16 wherever no CUDA GPU is ("Your setup doesn't
        # support bf16/gpu"), though DeepSpeed's CPU accelerator trains in it (CPUs with AVX-512-BF16 or AMX multiply
        # bf16 2-3x faster than fp32). The process group and DeepSpeed stay as configured (use_configured_state).
        use_cpu=precision in ("bf16", "fp16") and not torch.cuda.is_available(),
        gradient_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=max(t.save_steps, 1),
        save_total_limit=None,  # rotation is ours: it must only count complete checkpoints
        save_safetensors=True,
        eval_strategy=("steps" if t.eval_steps else "epoch") if cfg.data.eval_ratio > 0 else "no",
        eval_steps=t.eval_steps or None,
        # Loss only: otherwise every eval batch's outputs (hidden states included) are gathered and concatenated,
        # which made a 373-record evaluation of the starter take 88 s.
        prediction_loss_only=True,
        seed=t.seed,
        data_seed=t.seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        save_only_model=False,
        ddp_timeout=3600,
    )


def build_trainer(run: Path, cfg: RunConfig, head_loss: str):
    """The trainer with its model, data and callback, the tokenizer, and the callback (which knows why it stopped)."""
    from trainer_core.models.local import check_model_dir, load_tokenizer
    from trainer_core.training.callbacks import RunDirCallback
    from trainer_core.training.loss import LabelledLoss
    from trainer_core.training.trainer import SupervisedTrainer, TokenCounts

    torch.manual_seed(cfg.train.seed)
    precision = resolve_precision(cfg.train.precision)
    targs = training_arguments(cfg, run, precision)
    log_rank0(f"ranks={targs.world_size} precision={precision} zero_stage={cfg.deepspeed.stage} "
              f"offload={cfg.deepspeed.offload_optimizer}/{cfg.deepspeed.offload_param}")
    startup_step(run, protocol.PHASE_PREPARING_DATA)
    # Checked again here: the folder may have moved or changed between creating the run and starting it.
    check_model_dir(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = getattr(tokenizer, "eod_id", None) or tokenizer.eos_token_id or 0
    train_rows, eval_rows = build_rows(cfg, tokenizer, log_rank0)
    startup_step(run, protocol.PHASE_LOADING_MODEL)
    counts = TokenCounts()
    callback = RunDirCallback(run, cfg, counts)
    attention = None
    if cfg.data.packing and torch.cuda.is_available():
        attention = packed_attention(True, precision, torch.cuda.get_device_capability(), flash_attn_installed(),
                                     supports_flash_attention(cfg))
    log_rank0(f"attention: {attention or 'the model default (sdpa)'}; weights load in {load_dtype(precision)}")
    model = load_model(cfg, precision, attention)
    if cfg.train.method != "full" and global_rank() == 0 and (run / protocol.STATUS).exists():
        trainable, total = model.get_nb_trainable_parameters()  # counts ZeRO-3's partitioned weights whole
        protocol.update_status(run, trainable_params=int(trainable), total_params=int(total))  # for the Monitor
    if cfg.deepspeed.offload_optimizer != "none":
        startup_step(run, protocol.PHASE_BUILDING_KERNELS)
        build_cpu_adam()
    trainer = SupervisedTrainer(
        model=model,
        args=targs,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=Collator(pad_token_id=pad_id, packed=cfg.data.packing, flatten=attention == FLASH),
        processing_class=tokenizer,  # checkpoints carry the tokenizer, so any of them can be chatted with
        callbacks=[callback],
        run=run, loss=LabelledLoss(head_loss, log=log_rank0), counts=counts,
    )
    return trainer, tokenizer, callback


FLASH = "flash_attention_2"


def build_cpu_adam() -> None:
    """Load DeepSpeed's CPU Adam now, JIT-compiling it on first use (minutes), so start-up shows it as a step of
    its own: DeepSpeedCPUAdam, built inside deepspeed.initialize, then finds the loaded module."""
    from deepspeed.ops.op_builder import CPUAdamBuilder

    CPUAdamBuilder().load()


def load_dtype(precision: str) -> torch.dtype:
    """The dtype the weights load in: the training dtype. Under bf16/fp16 DeepSpeed casts the parameters to it
    anyway and builds its fp32 master copies from those 16-bit values (as ZeRO-3's zero.Init does from the config),
    so an fp32 load changed no number and only held the model at twice its size in every rank's host RAM (a 7B:
    ~30 GB per rank)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def packed_attention(packed: bool, precision: str, capability: tuple[int, int] | None, flash_installed: bool,
                     model_supports_flash: bool) -> str | None:
    """FLASH for packed rows where it runs, else None (the model's default, SDPA). Packed rows have no attention
    mask, so transformers hands SDPA a block-diagonal mask built from the position ids, and SDPA cannot use its
    flash kernel with a mask; flash_attention_2 takes the boundaries from the position ids in its variable-length
    kernel instead. It needs the flash_attn package, a CUDA GPU of compute capability 8.0 or newer, 16-bit
    activations and a model class that implements it. `capability` is None without a CUDA GPU."""
    if packed and precision in ("bf16", "fp16") and capability is not None and capability >= (8, 0) \
            and flash_installed and model_supports_flash:
        return FLASH
    return None


def flash_attn_installed() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def supports_flash_attention(cfg: RunConfig) -> bool:
    """Whether the model's transformers class implements flash_attention_2 (remote code: not vouched for)."""
    if cfg.model.trust_remote_code:
        return False
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(cfg.model.path)
    if type(config) not in AutoModelForCausalLM._model_mapping:
        return False
    return bool(getattr(AutoModelForCausalLM._model_mapping[type(config)], "_supports_flash_attn", False))


def load_model(cfg: RunConfig, precision: str, attention: str | None = None):
    from transformers import AutoModelForCausalLM

    from trainer_core.models import adapters

    extra = {"attn_implementation": attention} if attention else {}
    if cfg.train.method == "qlora":  # preflight refused it without a CUDA GPU
        extra["quantization_config"] = quantization_config(precision)
        if cfg.deepspeed.stage < 3:  # ZeRO-3 places (and shards) the weights itself and refuses a device_map
            extra["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code,
                                                 dtype=load_dtype(precision), use_safetensors=True, **extra)
    if cfg.train.gradient_checkpointing and getattr(model, "supports_gradient_checkpointing", False):
        model.config.use_cache = False
    if adapters.uses_adapter(cfg.train.method):
        model = adapters.wrap_for_training(model, cfg, log=log_rank0)
    return model


def quantization_config(precision: str):
    """QLoRA's base: 4-bit NF4 with double quantisation and a 16-bit compute dtype (bf16 where the GPU has it).
    The 4-bit weights are stored in that dtype too, so ZeRO-3 can shard them like the other parameters."""
    from transformers import BitsAndBytesConfig

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)


def build_rows(cfg: RunConfig, tokenizer, log) -> tuple[ArrayRows, ArrayRows | None]:
    """Load, validate, encode and (optionally) pack the dataset into training and evaluation rows.

    Records stay in flat int32 arrays (encoded_set) and rows are lists of record indices, so a million records
    fit in a few hundred MB; the split and the packing are the same as when records were Python lists."""
    from trainer_core.data.encoded_set import encode_file
    from trainer_core.data.split import held_out_split

    enc = encode_file(cfg.data.path, tokenizer, persona=cfg.data.persona, max_length=cfg.data.max_length)
    if len(enc) == 0:
        raise UserError("training.no_usable_records", "data.path {path} has no usable records ({errors} row "
                        "errors); run `python -m trainer_core check-data` on it", path=cfg.data.path,
                        errors=enc.n_errors)
    eval_idx, train_idx = held_out_split(len(enc), seed=cfg.train.seed, eval_ratio=cfg.data.eval_ratio,
                                         max_eval=cfg.data.max_eval_records)
    lost = enc.n_labels == 0
    truncated = int(enc.truncated[train_idx].sum()) if train_idx else 0
    if truncated:
        log(f"data: {truncated} of {len(train_idx)} records truncated at data.max_length={cfg.data.max_length}; "
            f"{int(lost[train_idx].sum())} lost their whole answer and are skipped")
    # Index arrays, not per-record Python: a million records.
    train_idx = [] if not train_idx else np.asarray(train_idx)[~lost[train_idx]].tolist()
    eval_idx = [] if not eval_idx else np.asarray(eval_idx)[~lost[eval_idx]].tolist()
    if not train_idx:
        raise UserError("training.no_answer_tokens", "no training record keeps any answer token at "
                        "data.max_length={max_length}; raise it", max_length=cfg.data.max_length)
    if cfg.data.packing:
        bins = first_fit_decreasing(enc.lengths[train_idx], cfg.data.max_length)
        random.Random(cfg.train.seed).shuffle(bins)
        members = [[train_idx[j] for j in b] for b in bins]
    else:
        members = [[i] for i in train_idx]
    log(f"data: {len(enc)} usable records ({enc.n_errors} rejected), {len(train_idx)} train / "
        f"{len(eval_idx)} eval, {len(members)} training rows{' (packed)' if cfg.data.packing else ''}, "
        f"{int(enc.n_labels[train_idx].sum())} label tokens")
    return ArrayRows(enc, members), (ArrayRows(enc, [[i] for i in eval_idx]) if eval_idx else None)


def save_final(trainer, tokenizer, cfg: RunConfig, run: Path) -> None:
    """Consolidated safetensors (a lora/qlora run: the adapter in PEFT's format, pointing at its base) + tokenizer
    + persona in final/, published by a rename once complete."""
    from trainer_core.models.export import disk_full_named, write_persona

    tmp = run / protocol.FINAL_TMP
    if global_rank() == 0 and tmp.exists():
        shutil.rmtree(tmp)
    barrier()
    with disk_full_named(run / protocol.FINAL):
        trainer.save_model(str(tmp))  # all ranks: ZeRO-3 gathers the 16-bit weights here
    barrier()
    if global_rank() != 0:
        return
    with disk_full_named(run / protocol.FINAL):
        # final/ is what users share and load: weights as safetensors only, no pickled Trainer arguments.
        (tmp / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(tmp))
        model = trainer.accelerator.unwrap_model(trainer.model)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(tmp))
        write_persona(cfg, tmp)
    protocol.mark_complete(tmp, {"time": time.time()})
    final = run / protocol.FINAL
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)
    protocol.fsync_dir(run)


def finish(run: Path, cfg: RunConfig, trainer, tokenizer, callback, supervised: bool) -> int:
    """After training: final/ when training ran to its end, the progress fields in status.json either way. The
    terminal state is written by state.record_end alone: the supervisor calls it once the launcher exits; a run
    launched without one (by hand, Slurm) has rank 0 call it here, as it exits with code 0."""
    rank0 = global_rank() == 0
    if callback.lost:
        # The supervisor (or launcher) is gone: nobody else will say why the run ended. The state turns `failed`
        # once no process of the run remains (read_state), with this cause.
        if rank0:
            cause = LOST.get("cause") or text("training.lost_unknown", "a process of the run died")
            protocol.update_status(run, phase=None, error=text(
                "training.lost_saved", "{cause}; the ranks saved checkpoint {step} and stopped; resume to go on",
                cause=cause, step=trainer.state.global_step))
        log_rank0("stopped after saving a checkpoint: a process above the ranks died")
        return 0
    if callback.stopping:
        if rank0:
            protocol.update_status(run, phase=None)
        log_rank0("stopped on request after saving a checkpoint")
    else:
        if rank0:
            protocol.update_status(run, phase=protocol.PHASE_CONSOLIDATING, eta_s=None)
        save_final(trainer, tokenizer, cfg, run)
        if rank0:
            protocol.update_status(run, step=trainer.state.global_step, final=True, phase=None)
            log_rank0(f"final model written to {run / protocol.FINAL}")
    if rank0 and not supervised:
        record_end(run, 0)  # `stopped` (the stop request in control.json) or `completed` (final/ on disk)
    return 0


def record_user_error(e: UserError) -> None:
    """Rank 0 keeps the coded form of the user error it stops on in status.json: the log holds only its English,
    and whoever records the end (the supervisor, or read_state for a run launched by hand) keeps this one when the
    log names the same sentence, so the dashboard can say it in Chinese."""
    try:
        run = parse_args(None).run_dir.resolve()
        if global_rank() == 0 and (run / protocol.STATUS).exists():
            protocol.update_status(run, error=e.text)
    except (OSError, SystemExit):
        pass  # the English line in train.log still says it


if __name__ == "__main__":
    try:
        code = main()
        ranks.close_distributed()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        record_user_error(e)
        sys.exit(2)
    # Everything the run keeps is on disk by now (checkpoints, status, metrics: each written atomically). A gloo rank
    # still sometimes aborted in the interpreter's exit-time destructors ("terminate called without an active
    # exception", a C++ thread object destroyed while joinable) after a clean stop, failing the whole job; leaving
    # without them, after flushing what Python buffers, ends the rank with its own code.
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
