# .venv/bin/python -m pytest tests/training/test_linear_ce.py -q
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


def confident_case(n: int, vocab: int, hidden: int, p_target: float, seed: int = 0):
    """fp64 hidden states, head weight and targets where every row gives its target probability p_target, as a
    fine-tuned chat model does to template and end-of-turn tokens: each hidden state points at its target's row
    (plus noise), scaled by bisection until the softmax puts p_target there."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(vocab, hidden, generator=g, dtype=torch.float64) / hidden ** 0.5
    target = torch.randint(0, vocab, (n,), generator=g)
    direction = weight[target] + 0.5 * torch.randn(n, hidden, generator=g, dtype=torch.float64) / hidden ** 0.5
    scores = direction @ weight.T
    lo, hi = torch.zeros(n, 1, dtype=torch.float64), torch.full((n, 1), 200.0, dtype=torch.float64)
    for _ in range(40):
        c = (lo + hi) / 2
        low = torch.softmax(c * scores, 1).gather(1, target[:, None]) < p_target
        lo, hi = torch.where(low, c, lo), torch.where(low, hi, c)
    return c * direction, weight, target


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p_target", [0.99, 0.997, 0.999])
def test_16bit_is_as_exact_as_plain_16bit_logits(dtype, p_target):
    """Against an fp64 reference, the blockwise loss and both gradients in bf16/fp16 are as close as the plain path's
    (16-bit logits, then F.cross_entropy in fp32), at target probabilities up to 0.999.

    Rows' own losses are compared (the error of their sum is mostly the luck of cancelling roundings), to within 10% of
    the plain path's own error: the blockwise gradient of the hidden states adds one more 16-bit rounding per
    vocabulary block. The incoming gradient is what training sends: 1/label tokens, times a loss scale of 2^16 in
    fp16, so small softmax values must survive in fp16 as they do in the plain path's backward."""
    n, vocab, blocks = 128, 2048, (512, 32)
    hidden, weight, target = confident_case(n, vocab, 64, p_target)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    want = F.cross_entropy(h @ w.T, target, reduction="none")
    want.sum().backward()
    scale = (2.0 ** 16 if dtype == torch.float16 else 1.0) / n

    def run(loss_fn):
        h16, w16 = hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_()
        (loss_fn(h16, w16, target) * scale).backward()
        with torch.no_grad():  # one call per row, for the first 32 rows
            rows = torch.stack([loss_fn(h16[i:i + 1], w16, target[i:i + 1]) for i in range(32)]).double()
        return [float((rows - want[:32].detach()).abs().sum() / want[:32].detach().sum()),
                rel(h16.grad / scale, h.grad), rel(w16.grad / scale, w.grad)]

    plain = run(lambda a, b, t: F.cross_entropy((a @ b.T).float(), t, reduction="sum"))
    ours = run(lambda a, b, t: linear_cross_entropy(a, b, t, blocks))
    worse = [f"{what}: blockwise error {o:.4g}, plain 16-bit {p:.4g}"
             for what, p, o in zip(("loss", "grad_hidden", "grad_weight"), plain, ours) if o > 1.1 * p + 1e-6]
    assert not worse, worse
