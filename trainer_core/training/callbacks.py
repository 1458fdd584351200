"""The trainer's side of the run directory: metrics rows, progress, stop requests and complete checkpoints.

Rank 0 writes; every rank takes part in the collectives, so that all of them reach the same decision at the same
step (a rank that decided alone would wait forever in the next collective).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from trainer_core.config.run_config import RunConfig
from trainer_core.runs import protocol
from trainer_core.training.ranks import (LOST, StoppedStarting, all_reduce_ints, barrier, gather, global_rank,
                                         peak_memory_bytes)
from trainer_core.training.trainer import TokenCounts


def rotate_checkpoints(run: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; drop older ones and any unmarked (partial) leftovers."""
    complete = protocol.complete_checkpoints(run)
    newest = protocol.checkpoint_step(complete[-1]) if complete else -1
    for p in (run / protocol.CHECKPOINTS).glob(f"{protocol.CHECKPOINT_PREFIX}*"):
        if not (p / protocol.COMPLETE_MARKER).is_file() and protocol.checkpoint_step(p) < newest:
            shutil.rmtree(p, ignore_errors=True)
    for p in complete[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


class RunDirCallback(TrainerCallback):
    """Metrics, progress, stop requests and checkpoint completion, all through the run directory."""

    def __init__(self, run: Path, cfg: RunConfig, counts: TokenCounts):
        self.run, self.cfg, self.counts = run, cfg, counts
        self.rank = global_rank()
        self.t0 = self.last_t = time.time()
        self.start_step = 0
        self.last_tokens = (0, 0)
        self.metrics = open(run / protocol.METRICS, "a", encoding="utf-8") if self.rank == 0 else None
        self.stopping = False
        """A stop was requested (or a process above the ranks died): save, no evaluation."""
        self.lost = False
        """... because a process above the ranks died."""
        self.last_progress = 0.0
        self.eval_batches = 0

    def on_train_begin(self, args, state, control, **kw):
        # DeepSpeed is initialised (and a resumed checkpoint loaded): the last chance to stop without a step.
        stop = 1 if self.rank == 0 and protocol.read_control(self.run).action else 0
        if all_reduce_ints([stop])[0]:
            raise StoppedStarting
        self.t0 = self.last_t = time.time()
        self.start_step = state.global_step
        if self.rank == 0:
            protocol.update_status(self.run, state=protocol.RUNNING, phase=protocol.PHASE_TRAINING,
                                   step=state.global_step, total_steps=state.max_steps,
                                   started_training=time.time(), world_size=self.cfg.world_size)

    def on_step_end(self, args, state, control, **kw):
        # Rank 0 reads the control file, each rank adds whether its own watchdog fired, and the verdict is shared.
        request = 0
        if self.rank == 0:
            request = 1 if protocol.read_control(self.run).action == protocol.SAVE_AND_STOP else 0
        request, lost = all_reduce_ints([request, 1 if LOST else 0])
        if request or lost:
            self.stopping, self.lost = True, bool(lost)
            if lost:  # each rank's watchdog fires on its own clock: rank 0, which writes the cause, takes the first
                LOST.setdefault("cause", next((c for c in gather(LOST.get("cause")) if c), None))
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False  # a full evaluation pass before saving made Stop take minutes
            if self.rank == 0:
                protocol.update_status(self.run, state=protocol.STOPPING, phase=protocol.PHASE_SAVING, eta_s=None)
        elif state.global_step >= state.max_steps and self.rank == 0:
            protocol.update_status(self.run, phase=protocol.PHASE_FINISHING, eta_s=None)

    def on_epoch_end(self, args, state, control, **kw):
        if self.stopping:
            control.should_evaluate = False  # the end-of-epoch evaluation the Trainer schedules as it stops

    def on_prediction_step(self, args, state, control, **kw):
        self.eval_batches += 1
        now = time.time()
        if self.rank == 0 and now - self.last_progress >= 1.0:  # status.json at most once a second
            self.last_progress = now
            protocol.update_status(self.run, phase_done=self.eval_batches)

    def on_evaluate(self, args, state, control, **kw):
        self.eval_batches = 0

    def on_log(self, args, state, control, logs=None, **kw):
        tokens, labels = all_reduce_ints([self.counts.tokens, self.counts.label_tokens])
        peaks = gather(peak_memory_bytes())
        logs = dict(logs or {})
        if self.rank != 0 or ("eval_loss" not in logs and "loss" not in logs):
            return
        row = self._metrics_row(state, logs, tokens, labels, peaks)
        self.last_t, self.last_tokens = row.time, (tokens, labels)
        protocol.append_metrics(self.metrics, row)
        update = {"step": state.global_step, "total_steps": state.max_steps, "eta_s": row.eta_s}
        update.update({k: logs[k] for k in ("loss", "eval_loss") if logs.get(k) is not None})
        protocol.update_status(self.run, **update)

    def _metrics_row(self, state, logs: dict, tokens: int, labels: int, peaks: list[int]) -> protocol.MetricsRow:
        now = time.time()
        dt = max(now - self.last_t, 1e-9)
        elapsed = now - self.t0
        done = state.global_step - self.start_step
        eta = elapsed / done * max(state.max_steps - state.global_step, 0) if done > 0 else None
        return protocol.MetricsRow(
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=round(state.epoch or 0.0, 4),
            loss=logs.get("loss"),
            eval_loss=logs.get("eval_loss"),
            lr=logs.get("learning_rate"),
            grad_norm=logs.get("grad_norm"),
            tokens_per_s=(tokens - self.last_tokens[0]) / dt,
            label_tokens_per_s=(labels - self.last_tokens[1]) / dt,
            tokens=tokens,
            label_tokens=labels,
            elapsed_s=round(elapsed, 3),
            eta_s=None if eta is None else round(eta, 1),
            peak_mem_bytes=peaks,
            eval_s=logs.get("eval_runtime"),  # lets a reader subtract evaluation from training time
            time=now,
        )

    def on_save(self, args, state, control, **kw):
        # Trainer.on_save fires after every rank wrote its shards; the barrier makes that true across nodes.
        barrier()
        if self.rank == 0:
            ckpt = protocol.checkpoint_dir(self.run, state.global_step)
            if ckpt.is_dir():
                protocol.mark_complete(ckpt, {"step": state.global_step, "time": time.time()})
                rotate_checkpoints(self.run, self.cfg.train.save_total_limit)
                protocol.update_status(self.run, last_checkpoint=state.global_step)
        barrier()

    def on_train_end(self, args, state, control, **kw):
        if self.metrics:
            self.metrics.close()
