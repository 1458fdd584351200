"""How the blockwise head loss (training/linear_ce) cuts its work, and the memory that costs: one rule for the loss,
which runs it, and the memory planner, which sizes it without importing torch."""

from __future__ import annotations

# Logits per block (tokens x vocabulary rows) and tokens per block. CPU: 2^22 fp32 values (16 MB). Blocks of 4 MB,
# one core's L2, are as fast on an idle machine, but four times as many small ops lose more whenever the cores are
# shared: every op's threads meet at a barrier. GPU: 2^25 (128 MB), enough to keep the kernel count down.
CPU_BLOCK, CPU_TOKENS = 1 << 22, 512
GPU_BLOCK, GPU_TOKENS = 1 << 25, 4096


def block_sizes(n_tokens: int, vocab: int, on_gpu: bool = False) -> tuple[int, int]:
    """(vocabulary rows, tokens) per block."""
    budget, max_tokens = (GPU_BLOCK, GPU_TOKENS) if on_gpu else (CPU_BLOCK, CPU_TOKENS)
    tokens = max(1, min(n_tokens, max_tokens))
    rows = min(vocab, max(1024, budget // tokens))
    return rows, tokens


def workspace_bytes(n_tokens: int, vocab: int, hidden: int, weight_bytes: int, on_gpu: bool = False) -> int:
    """Peak extra memory of one call: the head's weight gradient (returned by backward), the gradient of the hidden
    states, and one block of logits in fp32 with its softmax in the matmul dtype."""
    rows, tokens = block_sizes(n_tokens, vocab, on_gpu)
    return vocab * hidden * weight_bytes + n_tokens * hidden * 8 + rows * tokens * (4 + weight_bytes)
