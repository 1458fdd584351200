"""Bench-only: our trainer also trains the token right after each trained `<|im_end|>` (the `\\n` of ChatML), as
TRL's SFTTrainer and LLaMA-Factory do (bench/peer_bench.py, recipe ours-newline).

peer_bench puts this folder on the PYTHONPATH of that recipe's processes only. Once trainer_core.data.encoded_set
is imported, every conversation it encodes gets that one more label per answer, and its on-disk cache key changes,
so an ordinary run never reads the labels this recipe wrote (nor the reverse). The recipe's in-training held-out
curve then counts those labels too: compare its final model, which peer_bench rescores with bench/common.py like
every other recipe's, not its time to a target.
"""

from __future__ import annotations

import os

from bench.hooks.after_import import after_import


def _label_newline(module) -> None:
    encode = module.encode_conversations

    def encode_with_newline(tokenizer, conversations, **kwargs):
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        out = encode(tokenizer, conversations, **kwargs)
        for e in out:
            for i in range(len(e.labels) - 1):
                if e.labels[i] == im_end and e.labels[i + 1] == module.IGNORE_INDEX:
                    e.labels[i + 1] = e.input_ids[i + 1]
                    e.n_label_tokens += 1
        return out

    module.encode_conversations = encode_with_newline
    module.CACHE_VERSION = f"{module.CACHE_VERSION}+newline-label"


after_import({"trainer_core.data.encoded_set": _label_newline})
if os.environ.get("BENCH_PHASES"):
    import bench.hooks.phase_timer.sitecustomize  # noqa: F401  (installs its own hooks on import)
