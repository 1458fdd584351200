"""Cross-entropy of a linear vocabulary head, computed block by block so the logits never exist in full.

For the labelled positions only, `linear_cross_entropy(hidden, weight, target)` equals
`F.cross_entropy(hidden @ weight.T, target, reduction="sum")` (to float rounding) with the same gradients. With a
152k vocabulary the full logits of a batch are hundreds of MB that the plain path writes, reads back for the
softmax, writes again as their gradient and reads twice more for the two backward matmuls; on a CPU that memory
traffic, not the arithmetic, is the cost. Here the vocabulary is cut into blocks small enough to stay in cache:
a first sweep takes each block's log-sum-exp, a second recomputes the block's logits, turns them into softmax
probabilities in place and folds them straight into both gradients, which are returned by backward (the same idea
as Liger-Kernel's fused linear cross-entropy, in plain PyTorch). Gradients are computed during forward, so the call
must be the last op on its inputs' path, as a loss is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Logits per block (tokens x vocabulary rows) and tokens per block. CPU: 2^22 fp32 values (16 MB). Blocks of 4 MB,
# one core's L2, are as fast on an idle machine, but four times as many small ops lose more whenever the cores are
# shared: every op's threads meet at a barrier. GPU: 2^25 (128 MB), enough to keep the kernel count down.
CPU_BLOCK, CPU_TOKENS = 1 << 22, 512
GPU_BLOCK, GPU_TOKENS = 1 << 25, 4096
SMALL = 48  # tokens up to which the plain product is faster (measured on the starter model's 152k x 64 head)


def block_sizes(n_tokens: int, vocab: int, on_gpu: bool = False) -> tuple[int, int]:
    """(vocabulary rows, tokens) per block."""
    budget, max_tokens = (GPU_BLOCK, GPU_TOKENS) if on_gpu else (CPU_BLOCK, CPU_TOKENS)
    tokens = max(1, min(n_tokens, max_tokens))
    rows = min(vocab, max(1024, budget // tokens))
    return rows, tokens


def workspace_bytes(n_tokens: int, vocab: int, hidden: int, weight_bytes: int, on_gpu: bool = False) -> int:
    """Peak extra memory of one call: the head's weight gradient (returned by backward), the gradient of the hidden
    states, and one block of logits in fp32 with its softmax in the matmul dtype (the memory planner uses this)."""
    rows, tokens = block_sizes(n_tokens, vocab, on_gpu)
    return vocab * hidden * weight_bytes + n_tokens * hidden * 8 + rows * tokens * (4 + weight_bytes)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, block_vocab, block_tokens, dtype):
        n, vocab = hidden.shape[0], weight.shape[0]
        # Matmuls in `dtype`; softmax statistics and accumulators in fp32; the target logit and the "- 1 at the
        # target" part of the gradient from the inputs as given.
        h_all, w = hidden.to(dtype), weight.to(dtype)
        starts = range(0, vocab, block_vocab)
        block_lse = torch.empty(n, len(starts), dtype=torch.float32, device=hidden.device)
        for t0 in range(0, n, block_tokens):
            h = h_all[t0:t0 + block_tokens]
            for j, v0 in enumerate(starts):
                block_lse[t0:t0 + block_tokens, j] = torch.logsumexp(
                    torch.mm(h, w[v0:v0 + block_vocab].T).float(), dim=1)
        lse = torch.logsumexp(block_lse, dim=1)
        target_rows = weight[target].float()
        loss = (lse - (hidden.float() * target_rows).sum(-1)).sum()

        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_hidden = torch.zeros(n, hidden.shape[1], dtype=torch.float32, device=hidden.device)
            grad_weight = torch.empty_like(weight)
            for v0 in starts:
                wb = w[v0:v0 + block_vocab]
                acc = None
                for t0 in range(0, n, block_tokens):
                    h = h_all[t0:t0 + block_tokens]
                    # softmax = exp(logit - lse); the "- 1 at the target" part is added once, below.
                    p = torch.mm(h, wb.T).float().sub_(lse[t0:t0 + block_tokens, None]).exp_().to(dtype)
                    grad_hidden[t0:t0 + block_tokens].add_(torch.mm(p, wb).float())
                    part = torch.mm(p.T, h).float()
                    acc = part if acc is None else acc.add_(part)
                if acc is None:  # no labelled token at all
                    grad_weight[v0:v0 + block_vocab] = 0
                    continue
                here = (target >= v0) & (target < v0 + block_vocab)
                acc.index_add_(0, target[here] - v0, hidden[here].float(), alpha=-1)
                grad_weight[v0:v0 + block_vocab] = acc.to(weight.dtype)
            grad_hidden.sub_(target_rows)
            ctx.save_for_backward(grad_hidden.to(hidden.dtype), grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype), \
            None, None, None, None


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
