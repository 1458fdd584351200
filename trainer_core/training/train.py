"""Training entry point that the `deepspeed` launcher starts on every rank.

    deepspeed --no_local_rank --num_gpus N --module trainer_core.training.train --run-dir runs/<name>

Everything it needs is in the run directory (config.yaml, ds_config.json); everything it reports goes back there.
Normally started by `python -m trainer_core train` / the dashboard through the supervisor, not by hand.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer_core.runs import device_locks

from trainer_core.runs import processes as run_processes
from trainer_core.runs import protocol as rd
from trainer_core.data.batching import IGNORE, ArrayRows, Collator, first_fit_decreasing
from trainer_core.config.run_config import RunConfig, load_config
from trainer_core.errors import UserError
from trainer_core.config.hardware import resolve_precision
from trainer_core.training.linear_ce import linear_cross_entropy


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def global_rank() -> int:
    d = _dist()
    return d.get_rank() if d else int(os.environ.get("RANK", 0))


def log_rank0(msg: str) -> None:
    if global_rank() == 0:
        print(f"[trainer] {msg}", flush=True)


def init_distributed() -> None:
    """Initialise torch.distributed through DeepSpeed and make accelerate agree on the world size.

    On DeepSpeed's CPU accelerator, accelerate leaves its backend unset and reports one process even though
    DeepSpeed runs N ranks: the HF Trainer then gives every rank the whole dataset and lets every rank write logs
    and checkpoints. We build accelerate's shared state ourselves and correct it from torch.distributed, and the
    TrainingArguments reuse it (use_configured_state).
    """
    from accelerate.state import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    state = PartialState()
    d = _dist()
    if d is not None and state.num_processes != d.get_world_size():
        state.num_processes = d.get_world_size()
        state.process_index = d.get_rank()
        state.local_process_index = int(os.environ.get("LOCAL_RANK", 0))
        state.backend = d.get_backend()


def release_shm_workspace() -> None:
    """Remove the name of this rank's /dev/shm all-reduce buffer once every rank has mapped it.

    DeepSpeed's CPU accelerator creates one 66 MB shared-memory file per rank for its all-reduce (named by uid,
    MASTER_ADDR, MASTER_PORT and rank) and never unlinks it, so every CPU run would leave that much RAM taken in
    /dev/shm until reboot; hundreds of runs filled this machine's RAM and got ranks OOM-killed. After a barrier every
    rank has opened every other rank's buffer (DeepSpeed's initialisation waits for that), so the names can go: the
    mappings stay valid, and the kernel frees the memory when the last rank exits, however it exits.
    """
    d = _dist()
    if d is None or torch.cuda.is_available():
        return
    d.barrier()
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_" \
           f"{os.environ.get('MASTER_PORT')}_{d.get_rank()}"
    Path("/dev/shm", name).unlink(missing_ok=True)


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # CPU: the rank's peak RSS


# Why this rank saves and stops on its own, without a stop request: the process it answers to died.
LOST: dict[str, str] = {}


def share_fate(run: Path) -> list[int]:
    """Tie this rank to the processes above it. DeepSpeed's `launch` dying sends SIGUSR1 (parent-death signal); the
    supervisor dying is seen by a watchdog thread. Either makes every rank save at the next step and exit. The
    device locks are joined, so they stay taken while this rank lives, whatever died first. Returns their fds."""
    signal.signal(signal.SIGUSR1, lambda *_: LOST.setdefault("cause", "DeepSpeed's launch process died"))
    run_processes.die_with_parent(signal.SIGUSR1)
    manifest = rd.read_json(run / rd.MANIFEST, {}) or {}
    # A manifest left by an earlier supervised attempt means nothing to a run started by hand or by Slurm.
    if not os.environ.get("TRAINER_SUPERVISED") or not manifest or not run_processes.on_this_host(manifest):
        return []
    fds = device_locks.hold_as_rank(run, manifest.get("lock_keys") or [])  # open until this process exits
    run_processes.watch_process(manifest, lambda: LOST.setdefault("cause", "the run's supervisor process was lost"))
    return fds


def set_phase(run: Path, phase: str, **fields) -> None:
    """What the run is doing now, for every reader of status.json (rank 0 only)."""
    if global_rank() == 0:
        rd.update_status(run, phase=phase, **fields)


def load_model(cfg: RunConfig, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        cfg.model.path,
        trust_remote_code=cfg.model.trust_remote_code,
        dtype=dtype,
        use_safetensors=True,
    )


def build_rows(cfg: RunConfig, tokenizer, log) -> tuple[ArrayRows, ArrayRows | None]:
    """Load, validate, encode and (optionally) pack the dataset into training and evaluation rows.

    Records stay in flat int32 arrays (encoded_set) and rows are lists of record indices, so a million records
    fit in a few hundred MB; the split and the packing are the same as when records were Python lists."""
    from trainer_core.data.encoded_set import encode_file

    enc = encode_file(cfg.data.path, tokenizer, persona=cfg.data.persona, max_length=cfg.data.max_length)
    if len(enc) == 0:
        raise UserError(f"data.path {cfg.data.path} has no usable records ({enc.n_errors} row errors); "
                        "run `python -m trainer_core check-data` on it")
    order = list(range(len(enc)))
    random.Random(cfg.train.seed).shuffle(order)
    n_eval = min(int(round(len(order) * cfg.data.eval_ratio)), cfg.data.max_eval_records)
    if cfg.data.eval_ratio > 0:
        n_eval = max(1, n_eval)
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    lost = enc.n_labels == 0
    truncated = int(enc.truncated[train_idx].sum()) if train_idx else 0
    if truncated:
        log(f"data: {truncated} of {len(train_idx)} records truncated at data.max_length={cfg.data.max_length}; "
            f"{int(lost[train_idx].sum())} lost their whole answer and are skipped")
    train_idx = [i for i in train_idx if not lost[i]]
    eval_idx = [i for i in eval_idx if not lost[i]]
    if not train_idx:
        raise UserError(f"no training record keeps any answer token at data.max_length={cfg.data.max_length}; raise it")
    if cfg.data.packing:
        lengths = enc.lengths
        bins = first_fit_decreasing([lengths[i] for i in train_idx], cfg.data.max_length)
        random.Random(cfg.train.seed).shuffle(bins)
        members = [[train_idx[j] for j in b] for b in bins]
    else:
        members = [[i] for i in train_idx]
    log(f"data: {len(enc)} usable records ({enc.n_errors} rejected), {len(train_idx)} train / "
        f"{len(eval_idx)} eval, {len(members)} training rows{' (packed)' if cfg.data.packing else ''}, "
        f"{int(enc.n_labels[train_idx].sum())} label tokens")
    return ArrayRows(enc, members), (ArrayRows(enc, [[i] for i in eval_idx]) if eval_idx else None)


def make_trainer_class(run: Path):
    from transformers import Trainer

    class SupervisedTrainer(Trainer):
        """Computes the vocabulary projection and loss only where a label exists, without full logits.

        On a 152k vocabulary the head costs more than the rest of a small model. The fast path asks the model for
        no logits at all (an empty `logits_to_keep`), takes the final hidden states at the labelled positions and
        computes the head's cross-entropy blockwise (`linear_ce`). Models it cannot vouch for (remote code, a
        biased or scaled head, ZeRO-3's partitioned weights) get logits at the labelled positions only instead.
        """

        tokens_seen = 0
        label_tokens_seen = 0
        eval_sum = 0.0
        eval_count = 0

        def _align_special_tokens(self):
            """Keep the source model's token ids. The Trainer would copy the tokenizer's eos/pad/bos into config.json
            and generation_config.json ("Updated tokens"), and a tokenizer whose eos_token is not the template's
            end-of-turn marker (GGUF conversions) would then leave a final/ that never stops generating."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            target = labels[:, 1:]
            mask = target != IGNORE
            n_labels = int(mask.sum())
            if model.training:
                self.tokens_seen += int(inputs["input_ids"].numel())
                self.label_tokens_seen += n_labels
            head = self._fused_head(model, inputs, mask)
            if head is not None:
                outputs = model(**inputs, logits_to_keep=torch.empty(0, dtype=torch.long),
                                output_hidden_states=True, use_cache=False)
                hidden = outputs.hidden_states[-1][:, :-1][mask]
                loss_sum = linear_cross_entropy(hidden, head.weight, target[mask])
            else:
                if self._supports_logits_to_keep(model):
                    keep = mask.any(dim=0).nonzero().squeeze(-1)
                    outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
                    target = target[:, keep]
                else:
                    outputs = model(**inputs, use_cache=False)
                    outputs.logits = outputs.logits[:, :-1]
                logits = outputs.logits.float()
                loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=IGNORE, reduction="sum")
            if not model.training:
                self.eval_sum += float(loss_sum)
                self.eval_count += n_labels
            loss = loss_sum / max(n_labels, 1)
            return (loss, outputs) if return_outputs else loss

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            """eval_loss as the mean over every label token of the eval set, the same for any batch size or rank
            count (the Trainer's own is a mean of per-batch means)."""
            self.eval_sum, self.eval_count = 0.0, 0
            set_phase(run, "evaluating", phase_done=0, phase_total=len(dataloader))
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            set_phase(run, "training" if not self.control.should_training_stop else "finishing",
                      phase_done=None, phase_total=None)
            key = f"{metric_key_prefix}_loss"
            total = torch.tensor([self.eval_sum, float(self.eval_count)], dtype=torch.float64)
            if _dist() is not None:
                _dist().all_reduce(total)
            if total[1] > 0 and key in output.metrics:
                output.metrics[key] = float(total[0] / total[1])
            return output

        def _save_checkpoint(self, model, trial):
            set_phase(run, "saving checkpoint", phase_done=None, phase_total=None)
            super()._save_checkpoint(model, trial)
            set_phase(run, "training" if not self.control.should_training_stop else "finishing")

        def _base(self, model):
            base = self.accelerator.unwrap_model(model) if hasattr(self, "accelerator") else model
            return getattr(base, "module", base)

        def _supports_logits_to_keep(self, model) -> bool:
            if not hasattr(self, "_ltk"):
                self._ltk = "logits_to_keep" in inspect.signature(self._base(model).forward).parameters
            return self._ltk

        def _fused_head(self, model, inputs, mask):
            """The output embedding when the blockwise loss applies to this model, else None. Decided on the first
            batch with labels, by checking that the last hidden state times the head weight is the model's logits."""
            if hasattr(self, "_head"):
                return self._head
            if os.environ.get("TRAINER_HEAD_LOSS") == "logits":  # benchmarks measure the path without it
                self._head = None
                return None
            base = self._base(model)
            head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
            cfg = getattr(base, "config", None)
            plain = (isinstance(head, torch.nn.Linear) and head.bias is None
                     and not hasattr(head.weight, "ds_id")  # ZeRO-3 partitions it outside the head's forward
                     and not getattr(cfg, "final_logit_softcapping", None) and not hasattr(cfg, "logit_scale")
                     and self._supports_logits_to_keep(model))
            if plain and not mask.any():
                return None  # nothing to compare on yet
            self._head = None
            if plain:
                keep = mask.any(dim=0).nonzero().squeeze(-1)[:4]
                with torch.no_grad():
                    out = base(**inputs, logits_to_keep=keep, output_hidden_states=True, use_cache=False)
                    last = out.hidden_states[-1][:, keep]
                    mine = last @ head.weight.to(last.dtype).T
                if torch.allclose(mine.float(), out.logits.float(), rtol=1e-2, atol=1e-2):
                    self._head = head
                    log_rank0("loss: blockwise head cross-entropy at labelled positions")
            if self._head is None:
                log_rank0("loss: logits at labelled positions only (the blockwise head loss does not apply here)")
            return self._head

    return SupervisedTrainer


def make_callbacks(run: Path, cfg: RunConfig, trainer_ref: dict, keep: int):
    from transformers import TrainerCallback

    d = _dist()
    rank = global_rank()

    def all_reduce_int(values: list[int]) -> list[int]:
        t = torch.tensor(values, dtype=torch.long)
        if d is not None:
            d.all_reduce(t)
        return t.tolist()

    class RunDirCallback(TrainerCallback):
        """Metrics, progress, stop requests and checkpoint completion, all through the run directory."""

        def __init__(self):
            self.t0 = time.time()
            self.last_t = self.t0
            self.last_tokens = (0, 0)
            self.metrics = open(run / rd.METRICS, "a", encoding="utf-8") if rank == 0 else None

        stopping = False  # a stop was requested (or a process above the ranks died): save, no evaluation
        lost = False  # ... because a process above the ranks died
        last_progress = 0.0
        eval_batches = 0

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = self.last_t = time.time()
            self.start_step = state.global_step
            if rank == 0:
                rd.update_status(run, state="running", phase="training", step=state.global_step,
                                 total_steps=state.max_steps, started_training=time.time(),
                                 world_size=cfg.world_size)

        def on_step_end(self, args, state, control, **kw):
            # Every rank must reach the same decision in the same step, so rank 0 reads the control file, each
            # rank adds whether its own watchdog fired, and the verdict is shared; otherwise one rank would wait
            # forever in the next collective.
            request = 0
            if rank == 0:
                ctl = rd.read_json(run / rd.CONTROL, {}) or {}
                request = 1 if ctl.get("action") == "save_and_stop" else 0
            request, lost = all_reduce_int([request, 1 if LOST else 0])
            if request or lost:
                self.stopping, self.lost = True, bool(lost)
                control.should_save = True
                control.should_training_stop = True
                control.should_evaluate = False  # a full evaluation pass before saving made Stop take minutes
                if rank == 0:
                    rd.update_status(run, state="stopping", phase="saving checkpoint", eta_s=None)
            elif state.global_step >= state.max_steps and rank == 0:
                rd.update_status(run, phase="finishing", eta_s=None)

        def on_epoch_end(self, args, state, control, **kw):
            if self.stopping:
                control.should_evaluate = False  # the end-of-epoch evaluation the Trainer schedules as it stops

        def on_prediction_step(self, args, state, control, **kw):
            self.eval_batches += 1
            now = time.time()
            if rank == 0 and now - self.last_progress >= 1.0:  # status.json at most once a second
                self.last_progress = now
                rd.update_status(run, phase_done=self.eval_batches)

        def on_evaluate(self, args, state, control, **kw):
            self.eval_batches = 0

        def on_log(self, args, state, control, logs=None, **kw):
            trainer = trainer_ref["trainer"]
            tokens, labels = all_reduce_int([trainer.tokens_seen, trainer.label_tokens_seen])
            peak = peak_memory_bytes()
            peaks = [peak]
            if d is not None:
                peaks = [None] * d.get_world_size()
                d.all_gather_object(peaks, peak)
            if rank != 0:
                return
            now = time.time()
            dt = max(now - self.last_t, 1e-9)
            elapsed = now - self.t0
            done = state.global_step - self.start_step
            left = max(state.max_steps - state.global_step, 0)
            eta = elapsed / done * left if done > 0 else None
            logs = dict(logs or {})
            row = {
                "step": state.global_step,
                "total_steps": state.max_steps,
                "epoch": round(state.epoch or 0.0, 4),
                "loss": logs.get("loss"),
                "eval_loss": logs.get("eval_loss"),
                "lr": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens_per_s": (tokens - self.last_tokens[0]) / dt,
                "label_tokens_per_s": (labels - self.last_tokens[1]) / dt,
                "tokens": tokens,
                "label_tokens": labels,
                "elapsed_s": round(elapsed, 3),
                "eta_s": None if eta is None else round(eta, 1),
                "peak_mem_bytes": peaks,
                "eval_s": logs.get("eval_runtime"),  # lets a reader subtract evaluation from training time
                "time": now,
            }
            row = {k: v for k, v in row.items() if v is not None or k in ("loss", "eval_loss")}
            if "eval_loss" not in logs and "loss" not in logs:
                return
            self.last_t, self.last_tokens = now, (tokens, labels)
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()
            update = {"step": state.global_step, "total_steps": state.max_steps, "eta_s": row.get("eta_s")}
            if logs.get("loss") is not None:
                update["loss"] = logs["loss"]
            if logs.get("eval_loss") is not None:
                update["eval_loss"] = logs["eval_loss"]
            rd.update_status(run, **update)

        def on_save(self, args, state, control, **kw):
            # Trainer.on_save fires after every rank wrote its shards; the barrier makes that true across nodes.
            if d is not None:
                d.barrier()
            if rank == 0:
                ckpt = run / rd.CHECKPOINTS / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    rd.mark_complete(ckpt, {"step": state.global_step, "time": time.time()})
                    rotate_checkpoints(run, keep)
                    rd.update_status(run, last_checkpoint=state.global_step)
            if d is not None:
                d.barrier()

        def on_train_end(self, args, state, control, **kw):
            if self.metrics:
                self.metrics.close()

    return RunDirCallback()


def rotate_checkpoints(run: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; drop older ones and any unmarked (partial) leftovers."""
    complete = rd.complete_checkpoints(run)
    newest = rd.checkpoint_step(complete[-1]) if complete else -1
    for p in (run / rd.CHECKPOINTS).glob("checkpoint-*"):
        if not (p / rd.COMPLETE_MARKER).is_file() and rd.checkpoint_step(p) < newest:
            shutil.rmtree(p, ignore_errors=True)
    for p in complete[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def save_final(trainer, tokenizer, cfg: RunConfig, run: Path) -> None:
    """Consolidated safetensors + tokenizer + persona in final/, published by a rename once complete."""
    tmp = run / ".final.tmp"
    rank = global_rank()
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    d = _dist()
    if d is not None:
        d.barrier()
    trainer.save_model(str(tmp))  # all ranks: ZeRO-3 gathers the 16-bit weights here
    if d is not None:
        d.barrier()
    if rank != 0:
        return
    # final/ is what users share and load: weights as safetensors only, no pickled Trainer arguments.
    (tmp / "training_args.bin").unlink(missing_ok=True)
    tokenizer.save_pretrained(str(tmp))
    model = trainer.accelerator.unwrap_model(trainer.model)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(tmp))
    rd.write_json_atomic(tmp / "persona.json", {"persona": cfg.data.persona, "base_model": cfg.model.path,
                                                 "trust_remote_code": cfg.model.trust_remote_code})
    rd.mark_complete(tmp, {"time": time.time()})
    final = run / rd.FINAL
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    rd.fsync_dir(run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume-from", default="", help="checkpoint directory to resume from")
    parser.add_argument("--supervised", action="store_true",
                        help="started by the run's supervisor, which records the final state")
    args = parser.parse_args(argv)
    run = args.run_dir.resolve()
    cfg = load_config(run / rd.CONFIG)

    log = log_rank0
    share_fate(run)  # its lock descriptors stay open until this process exits
    import deepspeed

    deepspeed.init_distributed()
    init_distributed()
    release_shm_workspace()
    rank = global_rank()
    if rank == 0:
        rd.start_heartbeat(run)  # before loading the model, which can take minutes for a 7B
        if not os.environ.get("TRAINER_SUPERVISED"):
            # Launched by hand or by Slurm: a stop request left by an earlier attempt is not meant for this one (the
            # supervisor clears it itself before a supervised start).
            (run / rd.CONTROL).unlink(missing_ok=True)
    torch.manual_seed(cfg.train.seed)

    from transformers import TrainingArguments

    from trainer_core.models.local import check_model_dir, load_tokenizer

    precision = resolve_precision(cfg.train.precision)
    ds_config = json.loads((run / rd.DS_CONFIG).read_text(encoding="utf-8"))
    targs = TrainingArguments(
        output_dir=str(run / rd.CHECKPOINTS),
        deepspeed=ds_config,
        accelerator_config={"use_configured_state": True},
        per_device_train_batch_size=cfg.train.micro_batch_size,
        per_device_eval_batch_size=cfg.train.micro_batch_size,
        gradient_accumulation_steps=cfg.train.gradient_accumulation,
        num_train_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        learning_rate=cfg.train.learning_rate,
        lr_scheduler_type=cfg.train.lr_scheduler,
        warmup_ratio=cfg.train.warmup_ratio,
        weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        logging_steps=cfg.train.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if cfg.train.save_steps > 0 else "no",
        save_steps=max(cfg.train.save_steps, 1),
        save_total_limit=None,  # rotation is ours: it must only count complete checkpoints
        save_safetensors=True,
        eval_strategy=("steps" if cfg.train.eval_steps else "epoch") if cfg.data.eval_ratio > 0 else "no",
        eval_steps=cfg.train.eval_steps or None,
        # Loss only: otherwise every eval batch's outputs (hidden states included) are gathered and concatenated,
        # which made a 373-record evaluation of the starter take 88 s.
        prediction_loss_only=True,
        seed=cfg.train.seed,
        data_seed=cfg.train.seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        save_only_model=False,
        ddp_timeout=3600,
    )
    log(f"ranks={targs.world_size} precision={precision} zero_stage={cfg.deepspeed.stage} "
        f"offload={cfg.deepspeed.offload_optimizer}/{cfg.deepspeed.offload_param}")

    # Checked again here: the folder may have moved or changed between creating the run and starting it.
    check_model_dir(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = getattr(tokenizer, "eod_id", None) or tokenizer.eos_token_id or 0
    train_rows, eval_rows = build_rows(cfg, tokenizer, log)

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    # Weights load in full precision under mixed precision: DeepSpeed keeps fp32 masters and casts itself.
    model = load_model(cfg, torch.float32 if dtype != torch.float32 else dtype)
    if cfg.train.gradient_checkpointing and getattr(model, "supports_gradient_checkpointing", False):
        model.config.use_cache = False

    trainer_ref: dict = {}
    Trainer = make_trainer_class(run)
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=Collator(pad_token_id=pad_id, packed=cfg.data.packing),
        processing_class=tokenizer,  # checkpoints carry the tokenizer, so any of them can be chatted with
        callbacks=[callback := make_callbacks(run, cfg, trainer_ref, cfg.train.save_total_limit)],
    )
    trainer_ref["trainer"] = trainer
    resume = args.resume_from or None
    if resume:
        log(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)

    if callback.lost:
        # The supervisor (or launcher) is gone: nobody else will say why the run ended. The state turns `failed`
        # once no process of the run remains (read_state), with this cause.
        if rank == 0:
            rd.update_status(run, phase=None, error=f"{LOST.get('cause', 'a process of the run died')}; the ranks "
                             f"saved checkpoint {trainer.state.global_step} and stopped; resume to go on")
        log("stopped after saving a checkpoint: a process above the ranks died")
        return 0
    if callback.stopping:
        if rank == 0:
            rd.update_status(run, phase=None)
            if not os.environ.get("TRAINER_SUPERVISED"):
                rd.update_status(run, state="stopped", exit_code=0, ended=time.time(), forced=False)
        log("stopped on request after saving a checkpoint")
        return 0
    set_phase(run, "consolidating final", eta_s=None)
    save_final(trainer, tokenizer, cfg, run)
    if rank == 0:
        rd.update_status(run, step=trainer.state.global_step, final=True, phase=None)
        if not os.environ.get("TRAINER_SUPERVISED"):
            # Started by hand or by Slurm (launch_node.sh): no supervisor will record the end, so we do.
            rd.update_status(run, state="completed", exit_code=0, ended=time.time())
        log(f"final model written to {run / rd.FINAL}")
    return 0


def close_distributed() -> None:
    """Tear down the process group before the interpreter exits: left to exit-time destructors, a gloo rank
    sometimes aborted ("terminate called without an active exception") after a clean stop, failing the job."""
    d = _dist()
    if d is not None:
        d.destroy_process_group()


if __name__ == "__main__":
    try:
        code = main()
        close_distributed()
        sys.exit(code)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
