# .venv/bin/python -m pytest tests/test_linear_ce.py -q
"""The blockwise vocabulary-head cross-entropy gives the plain loss and the plain gradients."""

import pytest
import torch
import torch.nn.functional as F

from trainer_core.training.linear_ce import linear_cross_entropy


def reference(hidden, weight, target):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = F.cross_entropy((h @ w.T).float(), target, reduction="sum")
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("n,vocab,blocks", [(1, 1000, (128, 512)), (37, 1000, (96, 8)), (200, 3001, (1024, 64))])
def test_loss_and_gradients_match_plain_cross_entropy(n, vocab, blocks):
    torch.manual_seed(0)
    hidden, weight = torch.randn(n, 16), torch.randn(vocab, 16) * 0.3
    target = torch.randint(0, vocab, (n,))
    target[0] = vocab - 1  # a target in the last, partial block
    want_loss, want_gh, want_gw = reference(hidden, weight, target)

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = linear_cross_entropy(h, w, target, blocks)
    (loss * 0.5).backward()  # the incoming gradient is applied, as a loss scale or 1/accumulation would be
    assert torch.allclose(loss, want_loss, rtol=1e-5)
    assert torch.allclose(h.grad, want_gh * 0.5, atol=1e-5)
    assert torch.allclose(w.grad, want_gw * 0.5, atol=1e-5)


def test_tied_weight_gets_both_gradients():
    """The starter model ties the head to the embedding: autograd adds the head's gradient to the embedding's."""
    torch.manual_seed(1)
    emb = torch.nn.Embedding(500, 8)
    ids, target = torch.randint(0, 500, (12,)), torch.randint(0, 500, (12,))
    F.cross_entropy(emb(ids) @ emb.weight.T, target, reduction="sum").backward()
    want = emb.weight.grad.clone()
    emb.weight.grad = None
    linear_cross_entropy(emb(ids), emb.weight, target, (64, 4)).backward()
    assert torch.allclose(emb.weight.grad, want, atol=1e-5)


def test_bf16_activations_stay_close():
    torch.manual_seed(2)
    hidden, weight = torch.randn(64, 32), torch.randn(2000, 32) * 0.2
    target = torch.randint(0, 2000, (64,))
    want = reference(hidden, weight, target)[0]
    got = linear_cross_entropy(hidden.bfloat16(), weight.bfloat16(), target)
    assert abs(float(got - want)) / 64 < 0.02


def test_without_grad_only_the_loss():
    hidden, weight, target = torch.randn(5, 8), torch.randn(300, 8), torch.randint(0, 300, (5,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, target, (64, 2))
    assert torch.allclose(loss, reference(hidden, weight, target)[0], rtol=1e-5)
