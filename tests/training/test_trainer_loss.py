# .venv/bin/python -m pytest tests/training/test_trainer_loss.py -q
"""How the trainer normalises its loss over an optimizer step: the mean over every label token of the step, however
the step is split into accumulated micro-batches (as the HF Trainer does for its own losses and TRL's SFTTrainer)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, TrainingArguments

from trainer_core.data.batching import Collator
from trainer_core.data.chat_format import IGNORE_INDEX
from trainer_core.training.loss import LabelledLoss
from trainer_core.training.trainer import SupervisedTrainer, TokenCounts


def micro_batch(seed: int, n: int, answer: int, vocab: int = 151_000) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n,), generator=g).tolist()
    row = {"input_ids": ids, "labels": [IGNORE_INDEX] * (n - answer) + ids[n - answer:], "position_ids": list(range(n))}
    return Collator(pad_token_id=0, packed=True)([row])


@pytest.fixture
def trainer(starter_model, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(starter_model, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1,
                             gradient_accumulation_steps=2, report_to=[], use_cpu=True, disable_tqdm=True)
    return SupervisedTrainer(model=model, args=args, run=tmp_path, loss=LabelledLoss("auto"), counts=TokenCounts())


def reference_gradients(model, batches: list[dict]) -> tuple[float, dict]:
    """Textbook: full logits, summed cross-entropy over all label tokens of the step, divided by their number."""
    model.zero_grad()
    total, count = 0.0, 0
    for b in batches:
        logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits[:, :-1].float()
        target = b["labels"][:, 1:]
        total = total + F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="sum")
        count += int((target != IGNORE_INDEX).sum())
    (total / count).backward()
    return float(total.detach() / count), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_an_accumulated_step_is_the_mean_over_all_its_label_tokens(trainer):
    """Two micro-batches with 12 and 2 label tokens: the step's gradient is that of the mean over the 14 tokens,
    and the losses the Trainer logs add up to that mean (before, each micro-batch was divided by its own count and
    the Trainer did not divide by the accumulation steps: twice the gradient, the 2-token batch weighted 6x)."""
    model = trainer.model
    batches = [micro_batch(1, 20, 12), micro_batch(2, 9, 2)]
    want_loss, want = reference_gradients(model, batches)
    model.zero_grad()
    n_items = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    assert int(n_items) == 14  # positions whose next token is a label, as our loss counts them
    logged = sum(float(trainer.training_step(model, dict(b), n_items)) for b in batches)
    assert logged == pytest.approx(want_loss, rel=1e-4)
    got = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-6, msg=name)


def test_evaluation_and_unaccumulated_calls_keep_the_per_batch_mean(trainer):
    model = trainer.model
    b = micro_batch(3, 15, 6)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(b))
    want, _ = reference_gradients(model, [b])
    assert float(loss) == pytest.approx(want, rel=1e-4)


def test_a_model_without_loss_kwargs_keeps_the_per_batch_mean(trainer):
    """For such a model the Trainer divides each micro-batch's loss by the accumulation steps itself; dividing by
    the step's token count as well would shrink the gradient by that factor again."""
    trainer.model_accepts_loss_kwargs = False
    trainer.model.train()
    b = micro_batch(4, 15, 6)
    want, _ = reference_gradients(trainer.model, [b])
    assert float(trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=torch.tensor(60)).detach()) == \
        pytest.approx(want, rel=1e-4)
