"""The Hugging Face Trainer as this project runs it: the labelled-positions loss, token counts for the metrics, an
exact evaluation loss, and the run's phase in status.json around evaluations and saves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer

from trainer_core.models.adapters import drop_frozen_aliases, plain_model
from trainer_core.runs import protocol
from trainer_core.training.loss import LabelledLoss
from trainer_core.training.ranks import all_reduce_floats, global_rank


@dataclass
class TokenCounts:
    """Tokens this rank has trained on; the metrics callback sums them over ranks."""

    tokens: int = 0
    """Input positions of every training batch, padding included."""
    label_tokens: int = 0
    """Positions whose next token is a label (what the loss is over)."""


def set_phase(run: Path, phase: str | None, **fields) -> None:
    """What the run is doing now, for every reader of status.json (rank 0 only)."""
    if global_rank() == 0:
        protocol.update_status(run, phase=phase, **fields)


class SupervisedTrainer(Trainer):
    """A Trainer whose loss is `LabelledLoss`, whose eval_loss is a mean over every label token, and which says in
    the run directory when it evaluates or saves."""

    def __init__(self, *args, run: Path, loss: LabelledLoss, counts: TokenCounts, **kwargs):
        self.run_dir, self.labelled_loss, self.counts = run, loss, counts
        self.eval_sum, self.eval_count = 0.0, 0
        super().__init__(*args, **kwargs)

    def _align_special_tokens(self):
        """Keep the source model's token ids. The Trainer would copy the tokenizer's eos/pad/bos into config.json
        and generation_config.json ("Updated tokens"), and a tokenizer whose eos_token is not the template's
        end-of-turn marker (GGUF conversions) would then leave a final/ that never stops generating."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss to back-propagate: the batch's summed cross-entropy over the label tokens of the whole optimizer
        step. In training the Trainer passes `num_items_in_batch`, the label tokens of every micro-batch it will
        accumulate (summed over ranks), and then leaves the division to us: it neither divides by the
        accumulation steps nor lets DeepSpeed do it. Dividing by this micro-batch's own count instead made each
        step's gradient the sum of its micro-batches' means: `gradient_accumulation` times too large (so clipped
        that much harder) and weighting a short micro-batch's tokens more."""
        labels = inputs.pop("labels")
        loss_sum, n_labels, outputs = self.labelled_loss(model, self._base(model), inputs, labels)
        if model.training:
            self.counts.tokens += int(inputs["input_ids"].numel())
            self.counts.label_tokens += n_labels
        else:
            self.eval_sum += float(loss_sum)
            self.eval_count += n_labels
        # The Trainer divides by the accumulation steps itself when the model takes no loss kwargs (some
        # remote-code models): there the per-micro-batch mean is the one that comes out right.
        if model.training and num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            loss = loss_sum / torch.as_tensor(num_items_in_batch, device=loss_sum.device).clamp(min=1)
            if self.args.average_tokens_across_devices:
                # The count is over every rank, and DeepSpeed/DDP average the ranks' gradients: scale back up so
                # the step's gradient is the mean over all its label tokens.
                loss = loss * self.accelerator.num_processes
        else:
            loss = loss_sum / max(n_labels, 1)
        return (loss, outputs) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples: list, device):
        """Label tokens of one optimizer step's micro-batches, counted as our loss counts them: positions whose
        next token is a label (`labels[:, 1:]`), where the Trainer would count `labels` unshifted."""
        shifted = [{**b, "labels": b["labels"][:, 1:]} for b in batch_samples if "labels" in b]
        return super()._get_num_items_in_batch(shifted, device) if shifted else None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """eval_loss as the mean over every label token of the eval set, the same for any batch size or rank
        count (the Trainer's own is a mean of per-batch means)."""
        self.eval_sum, self.eval_count = 0.0, 0
        set_phase(self.run_dir, protocol.PHASE_EVALUATING, phase_done=0, phase_total=len(dataloader))
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        set_phase(self.run_dir, self._phase_after(), phase_done=None, phase_total=None)
        key = f"{metric_key_prefix}_loss"
        total, count = all_reduce_floats([self.eval_sum, float(self.eval_count)])
        if count > 0 and key in output.metrics:
            output.metrics[key] = float(total / count)
        return output

    def create_optimizer(self):
        """The Trainer's optimizer without empty parameter groups. It puts weights and biases/norms in two groups;
        a LoRA run trains only adapter matrices, so the second is empty, and ZeRO-3's optimizer drops empty groups
        while the learning-rate scheduler (built over the groups before DeepSpeed wraps them) still counts two:
        its first step failed with `zip() argument 2 is longer than argument 1`."""
        optimizer = super().create_optimizer()
        if hasattr(optimizer, "param_groups"):  # not accelerate's DummyOptim (the DeepSpeed config's optimizer)
            optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        return optimizer

    def _save_checkpoint(self, model, trial):
        set_phase(self.run_dir, protocol.PHASE_SAVING, phase_done=None, phase_total=None)
        if self.is_deepspeed_enabled and hasattr(self.model, "peft_config"):
            drop_frozen_aliases(self.model_wrapped)  # a LoRA run's checkpoint: the adapter, not the tied head
        super()._save_checkpoint(model, trial)
        set_phase(self.run_dir, self._phase_after())

    def _save(self, output_dir=None, state_dict=None):
        """Tied weights stored once in every saved model folder (checkpoints and final/), at every ZeRO stage."""
        if state_dict is not None:
            from trainer_core.models.export import share_tied

            state_dict = share_tied(self._base(self.model), state_dict)
        super()._save(output_dir, state_dict=state_dict)

    def _phase_after(self) -> str:
        return protocol.PHASE_TRAINING if not self.control.should_training_stop else protocol.PHASE_FINISHING

    def _base(self, model):
        base = self.accelerator.unwrap_model(model) if hasattr(self, "accelerator") else model
        return plain_model(getattr(base, "module", base))  # a LoRA run's PeftModel: the model under it
