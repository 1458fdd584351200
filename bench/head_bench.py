"""The vocabulary head alone: forward + backward of its cross-entropy on the starter model's 152k x 64 head.

    .venv/bin/python bench/head_bench.py [--threads 1]

For one packed batch of the quickstart shape (2 rows of 256 tokens, about 190 of them labelled):
  all positions      logits for every token, as the tutorial's recipe computes them (labels masked in the loss);
  labelled, plain    logits at the labelled positions only, plain cross-entropy (our earlier path);
  labelled, blocks   trainer_core.training.linear_ce in fp32 (our path);
  labelled, blocks bf16   the same with bf16 matmuls (AMX on this CPU), to see whether bf16 pays.
CPU time (process_time) of the fastest of 7 calls each, interleaved, so other load on the machine matters less.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: trainer_core importable

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainer_core.training.linear_ce import linear_cross_entropy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, default=512, help="tokens in the batch (default 512)")
    p.add_argument("--labelled", type=int, default=190, help="of which labelled (default 190)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab, d = 151936, 64
    weight = (torch.randn(vocab, d) * 0.02).requires_grad_()
    hidden_all = torch.randn(args.tokens, d).requires_grad_()
    target_all = torch.randint(0, vocab, (args.tokens,))
    target_all[args.labelled:] = -100
    hidden, target = hidden_all[:args.labelled].detach().requires_grad_(), target_all[:args.labelled]

    def all_positions():
        F.cross_entropy((hidden_all @ weight.T).float(), target_all, ignore_index=-100).backward()

    def labelled_plain():
        F.cross_entropy((hidden @ weight.T).float(), target, reduction="sum").backward()

    def labelled_blocks():
        linear_cross_entropy(hidden, weight, target).backward()

    def labelled_blocks_bf16():
        w = weight.to(torch.bfloat16)  # autocast-style: bf16 copies, fp32 masters
        linear_cross_entropy(hidden.to(torch.bfloat16), w, target).backward()

    cases = {"all positions": all_positions, "labelled, plain": labelled_plain,
             "labelled, blocks": labelled_blocks, "labelled, blocks bf16": labelled_blocks_bf16}
    best = {k: float("inf") for k in cases}
    for _ in range(7):
        for name, fn in cases.items():
            weight.grad = hidden.grad = hidden_all.grad = None
            t = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t)
    # bf16 numerics against fp32 on the same inputs
    with torch.no_grad():
        ref = F.cross_entropy(hidden @ weight.T, target, reduction="sum") / len(target)
        got = linear_cross_entropy(hidden.to(torch.bfloat16), weight.to(torch.bfloat16), target) / len(target)
    print(f"head forward+backward, {args.tokens} tokens, {args.labelled} labelled, vocab {vocab} x {d}, "
          f"{args.threads} thread(s), CPU ms (best of 7):")
    base = best["all positions"]
    for name, t in best.items():
        print(f"  {name:24s} {t * 1e3:8.1f} ms   {base / t:5.2f}x")
    print(f"  bf16 loss per token differs from fp32 by {float(got - ref):+.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
