# .venv/bin/python -m pytest tests/training/test_loss.py -q
"""The training loss's dispatch on real models: the blockwise head and the logits path give the same loss and
gradients on the starter model, and each runs where it should (the decision is made once, on labelled data)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from trainer_core.data.batching import Collator
from trainer_core.data.chat_format import IGNORE_INDEX
from trainer_core.training.loss import LabelledLoss


def batch(vocab: int = 151_000) -> dict:
    """Two right-padded rows whose answers are the labelled tail, as the collator builds them."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for n, answer in ((14, 5), (9, 3)):
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n - answer) + ids[n - answer:],
                     "position_ids": list(range(n))})
    return Collator(pad_token_id=0, packed=False)(rows)


def run(loss: LabelledLoss, model, inputs: dict):
    """(loss sum, labelled tokens, gradient of every parameter) for one batch."""
    model.zero_grad()
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    loss_sum, n, _ = loss(model, model, inputs, labels)
    loss_sum.backward()
    return loss_sum.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def plain(model, inputs: dict) -> torch.Tensor:
    """The textbook loss: full logits, shifted, summed cross-entropy over the labels."""
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
    return F.cross_entropy(logits.float().transpose(1, 2), inputs["labels"][:, 1:], ignore_index=IGNORE_INDEX,
                           reduction="sum")


@pytest.fixture(scope="module")
def starter(starter_model):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(starter_model, dtype=torch.float32)


def test_blockwise_and_logits_paths_agree_on_the_starter(starter):
    inputs = batch()
    blockwise, logits = LabelledLoss("auto"), LabelledLoss("logits")
    loss_b, n_b, grads_b = run(blockwise, starter, inputs)
    loss_l, n_l, grads_l = run(logits, starter, inputs)
    assert (blockwise.path, logits.path) == ("blockwise", "logits")
    assert n_b == n_l == 5 + 3  # every answer token, each predicted from the position before it
    torch.testing.assert_close(loss_b, loss_l, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss_b, plain(starter, inputs), rtol=1e-5, atol=1e-4)
    assert grads_b.keys() == grads_l.keys()
    for name in grads_b:
        torch.testing.assert_close(grads_b[name], grads_l[name], rtol=1e-4, atol=1e-5, msg=name)


def test_the_choice_waits_for_a_batch_with_labels(starter):
    loss = LabelledLoss("auto")
    unlabelled = batch()
    unlabelled["labels"] = torch.full_like(unlabelled["labels"], IGNORE_INDEX)
    run(loss, starter, unlabelled)
    assert loss.path is None, "nothing to compare the head on yet"
    run(loss, starter, batch())
    assert loss.path == "blockwise"


def test_a_head_with_a_bias_gets_the_logits_path(starter_model):
    model = AutoModelForCausalLM.from_pretrained(starter_model, dtype=torch.float32, tie_word_embeddings=False)
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight.data.copy_(head.weight.data)
    model.set_output_embeddings(biased)
    said: list[str] = []
    loss = LabelledLoss("auto", log=said.append)
    loss_sum, _, _ = run(loss, model, batch())
    assert loss.path == "logits" and "does not apply" in said[0]
    torch.testing.assert_close(loss_sum, plain(model, batch()), rtol=1e-5, atol=1e-4)


def test_a_model_without_logits_to_keep_gets_full_logits(remote_code_model):
    model = AutoModelForCausalLM.from_pretrained(remote_code_model, trust_remote_code=True, dtype=torch.float32)
    loss = LabelledLoss("auto")
    inputs = batch(vocab=model.config.vocab_size)
    loss_sum, _, _ = run(loss, model, inputs)
    assert loss.path == "logits" and loss.keeps_logits(model) is False
    torch.testing.assert_close(loss_sum, plain(model, inputs), rtol=1e-5, atol=1e-4)


def test_unknown_head_loss_is_refused():
    with pytest.raises(ValueError, match="auto"):
        LabelledLoss("fast")
