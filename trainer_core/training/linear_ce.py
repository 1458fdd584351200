"""Cross-entropy of a linear vocabulary head, computed block by block so the logits never exist in full.

For the labelled positions only, `linear_cross_entropy(hidden, weight, target)` equals
`F.cross_entropy(hidden @ weight.T, target, reduction="sum")` (to float rounding) with the same gradients. With a
152k vocabulary the full logits of a batch are hundreds of MB that the plain path writes, reads back for the
softmax, writes again as their gradient and reads twice more for the two backward matmuls; on a CPU that memory
traffic, not the arithmetic, is the cost. Here the vocabulary is cut into blocks small enough to stay in cache:
forward takes each block's log-sum-exp and the target logits; backward recomputes each block's logits, turns them
into the logits' gradient (softmax - onehot, in fp32) and folds that straight into both gradients (the idea of
Liger-Kernel's fused linear cross-entropy, in plain PyTorch). In 16-bit its loss and gradients are as close to the
exact ones as the plain path's (materialised 16-bit logits, then F.cross_entropy), and fp16's loss scale reaches
the 16-bit products as it does there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer_core.config.head_loss import block_sizes

SMALL = 48  # tokens up to which the plain product is faster (measured on the starter model's 152k x 64 head)


class _LinearCrossEntropy(torch.autograd.Function):
    """Matmuls in `dtype`; softmax statistics, the loss and (p - onehot) in fp32. Forward sweeps the blocks once for
    the log-sum-exp and the target logit; backward sweeps them again for the gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, target, block_vocab, block_tokens, dtype):
        n, vocab = hidden.shape[0], weight.shape[0]
        h_all, w = hidden.to(dtype), weight.to(dtype)
        starts = range(0, vocab, block_vocab)
        # Per block, its largest logit and the sum of exp(logit - that) over the non-target logits. The loss of a
        # confident token (log(1 + the others' share), often under 0.01) is then taken with log1p, not as the small
        # difference of two large fp32 numbers; F.cross_entropy's own is no more exact than this.
        block_max = torch.empty(n, len(starts), dtype=torch.float32, device=hidden.device)
        block_sum = torch.empty_like(block_max)
        # The target logit from the same rounded logits as the others.
        target_logit = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for t0 in range(0, n, block_tokens):
            h, tt = h_all[t0:t0 + block_tokens], target[t0:t0 + block_tokens]
            for j, v0 in enumerate(starts):
                logits = torch.mm(h, w[v0:v0 + block_vocab].T).float()
                top = logits.amax(dim=1)
                block_max[t0:t0 + block_tokens, j] = top
                rows = ((tt >= v0) & (tt < v0 + logits.shape[1])).nonzero().squeeze(1)
                target_logit[t0 + rows] = logits[rows, tt[rows] - v0]
                logits[rows, tt[rows] - v0] = float("-inf")
                block_sum[t0:t0 + block_tokens, j] = logits.sub_(top[:, None]).exp_().sum(dim=1)
        top = block_max.amax(dim=1)
        others = (block_sum * (block_max - top[:, None]).exp()).sum(dim=1)  # sum of exp(other logit - top)
        gap = top - target_logit  # >= 0
        rest = torch.log(others + torch.exp(-gap))  # lse = top + rest
        # loss = lse - target logit = log1p(others * e^gap); past gap 30 (a target far from the top) its form
        # gap + rest is as exact and cannot overflow.
        loss = torch.where(gap < 30, torch.log1p(others * gap.clamp(max=30).exp()), gap + rest)
        ctx.save_for_backward(hidden, weight, target, top, rest)
        ctx.blocks, ctx.dtype = (block_vocab, block_tokens), dtype
        return loss.sum()

    @staticmethod
    def backward(ctx, grad_loss):
        """d loss / d logits = (softmax - onehot) * grad_loss, formed in fp32 for each block before its 16-bit
        products. Subtracting the one-hot part only after the products (as sum(p h) - h_target) cancels
        catastrophically when the target's probability is near 1: bf16's rounding of sum(p h) is then as large as
        the gradient itself. grad_loss carries fp16's loss scale, so the 16-bit operands are scaled as the plain
        path's are and small probabilities do not flush to zero."""
        hidden, weight, target, top, rest = ctx.saved_tensors
        (block_vocab, block_tokens), dtype = ctx.blocks, ctx.dtype
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, vocab = hidden.shape[0], weight.shape[0]
        h_all, w = hidden.to(dtype), weight.to(dtype)
        g = grad_loss.float()
        grad_hidden = torch.zeros(n, hidden.shape[1], dtype=torch.float32, device=hidden.device) if want_h else None
        grad_weight = torch.empty_like(weight) if want_w else None
        for v0 in range(0, vocab, block_vocab):
            wb = w[v0:v0 + block_vocab]
            acc = torch.zeros(wb.shape, dtype=torch.float32, device=hidden.device) if want_w else None
            for t0 in range(0, n, block_tokens):
                h, tt = h_all[t0:t0 + block_tokens], target[t0:t0 + block_tokens]
                span = slice(t0, t0 + block_tokens)
                d = torch.mm(h, wb.T).float().sub_(top[span, None]).sub_(rest[span, None]).exp_()
                rows = ((tt >= v0) & (tt < v0 + wb.shape[0])).nonzero().squeeze(1)
                d[rows, tt[rows] - v0] -= 1
                d = d.mul_(g).to(dtype)
                if want_h:
                    grad_hidden[t0:t0 + block_tokens].add_(torch.mm(d, wb).float())
                if want_w:
                    acc.add_(torch.mm(d.T, h).float())
            if want_w:
                grad_weight[v0:v0 + block_vocab] = acc.to(weight.dtype)
        return (grad_hidden.to(hidden.dtype) if want_h else None), grad_weight, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         blocks: tuple[int, int] | None = None) -> torch.Tensor:
    """Sum over rows of cross_entropy(hidden @ weight.T, target), as an fp32 scalar.

    hidden [n, d] (the final hidden states at labelled positions), weight [vocab, d] (the output embedding, no
    bias), target [n] token ids (no ignore index: select the labelled rows before calling). The products run in
    the activations' dtype (bf16 under mixed precision on a GPU), softmax statistics in fp32.
    """
    dtype = hidden.dtype
    if blocks is None and hidden.shape[0] <= SMALL:
        # A few tokens' logits fit in cache anyway; one plain product is cheaper than two blockwise sweeps.
        return F.cross_entropy((hidden.to(dtype) @ weight.to(dtype).T).float(), target, reduction="sum")
    if blocks is None:
        blocks = block_sizes(hidden.shape[0], weight.shape[0], hidden.is_cuda)
    return _LinearCrossEntropy.apply(hidden, weight, target, blocks[0], blocks[1], dtype)
