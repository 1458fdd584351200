"""The training loss: summed cross-entropy over the labelled positions of a batch, by the cheapest exact path.

On a 152k vocabulary the head costs more than the rest of a small model. The blockwise path asks the model for no
logits at all (an empty `logits_to_keep`), takes the final hidden states at the labelled positions and computes the
head's cross-entropy block by block (`linear_ce`). Models it cannot vouch for (remote code, a biased or scaled head,
ZeRO-3's partitioned weights) get the logits path: logits at the labelled positions only, then plain cross-entropy.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F

from trainer_core.data.chat_format import IGNORE_INDEX
from trainer_core.training.linear_ce import linear_cross_entropy

HEAD_LOSSES = ("auto", "logits")
"""`auto`: the blockwise head where it is exact for the model, else logits; `logits`: always the logits path
(benchmarks measure what the blockwise head saves)."""


class LabelledLoss:
    """Computes a batch's summed loss; decides once, on the first batch with labels, which path the model gets."""

    def __init__(self, head_loss: str = "auto", log: Callable[[str], None] = lambda _: None):
        if head_loss not in HEAD_LOSSES:
            raise ValueError(f"head_loss must be one of {HEAD_LOSSES}, not {head_loss!r}")
        self.head_loss = head_loss
        self.log = log
        self.path: str | None = None
        """"blockwise" or "logits" once decided; None before the first batch with labels."""
        self._head: torch.nn.Linear | None = None
        self._keeps_logits: bool | None = None

    def __call__(self, model, base, inputs: dict, labels: torch.Tensor):
        """(summed loss, number of labelled tokens, model outputs). `model` runs the forward (a DeepSpeed engine
        during training), `base` is the plain module under it."""
        target = labels[:, 1:]
        mask = target != IGNORE_INDEX
        head = self._blockwise_head(base, inputs, mask)
        if head is not None:
            outputs = model(**inputs, logits_to_keep=torch.empty(0, dtype=torch.long), output_hidden_states=True,
                            use_cache=False)
            hidden = outputs.hidden_states[-1][:, :-1][mask]
            return linear_cross_entropy(hidden, head.weight, target[mask]), int(mask.sum()), outputs
        if self.keeps_logits(base):
            keep = mask.any(dim=0).nonzero().squeeze(-1)
            outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
            target = target[:, keep]
        else:
            outputs = model(**inputs, use_cache=False)
            outputs.logits = outputs.logits[:, :-1]
        logits = outputs.logits.float()
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX,
                                   reduction="sum")
        return loss_sum, int(mask.sum()), outputs

    def keeps_logits(self, base) -> bool:
        """Whether the model's forward takes `logits_to_keep` (remote-code models may not)."""
        if self._keeps_logits is None:
            self._keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters
        return self._keeps_logits

    def _blockwise_head(self, base, inputs: dict, mask: torch.Tensor) -> torch.nn.Linear | None:
        """The output embedding when the blockwise loss applies to this model, else None. Decided on the first
        batch with labels, by checking that the last hidden state times the head weight is the model's logits."""
        if self.path is not None:
            return self._head
        if self.head_loss == "logits":
            return self._decide(None)
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        cfg = getattr(base, "config", None)
        plain = (isinstance(head, torch.nn.Linear) and head.bias is None
                 and not hasattr(head.weight, "ds_id")  # ZeRO-3 partitions it outside the head's forward
                 and not getattr(cfg, "final_logit_softcapping", None) and not hasattr(cfg, "logit_scale")
                 and self.keeps_logits(base))
        if not plain:
            return self._decide(None)
        if not mask.any():
            return None  # nothing to compare on yet
        keep = mask.any(dim=0).nonzero().squeeze(-1)[:4]
        with torch.no_grad():
            out = base(**inputs, logits_to_keep=keep, output_hidden_states=True, use_cache=False)
            last = out.hidden_states[-1][:, keep]
            mine = last @ head.weight.to(last.dtype).T
        return self._decide(head if torch.allclose(mine.float(), out.logits.float(), rtol=1e-2, atol=1e-2) else None)

    def _decide(self, head: torch.nn.Linear | None) -> torch.nn.Linear | None:
        self._head, self.path = head, "blockwise" if head is not None else "logits"
        if head is not None:
            self.log("loss: blockwise head cross-entropy at labelled positions")
        elif self.head_loss == "logits":
            self.log("loss: logits at labelled positions only (head_loss=logits)")
        else:
            self.log("loss: logits at labelled positions only (the blockwise head loss does not apply here)")
        return head
