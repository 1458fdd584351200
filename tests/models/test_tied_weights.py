# .venv/bin/python -m pytest tests/models/test_tied_weights.py -q    (slow: real 2-rank deepspeed runs of the starter on CPU)
"""A tied-embedding model (the starter is one, as Qwen2.5-0.5B/1.5B/3B are) keeps one copy of its tied weights in
final/, its checkpoints and its exports at every ZeRO stage, and still loads with the tie and the same logits."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from helpers import cli, quick_sets
from trainer_core.runs import protocol

pytestmark = pytest.mark.slow

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def weight_names(folder: Path) -> set[str]:
    names = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            names |= set(st.keys())
    return names


def logits(folder: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), f"{folder}: not tied"
    with torch.no_grad():
        return model(torch.tensor([[151644, 872, 198, 56568, 100165, 151645]])).logits


@pytest.mark.parametrize("stage, ranks", [(0, 1), (2, 2), (3, 2)])
def test_tied_weights_stored_once(runs_root, starter_model, stage, ranks):
    assert json.loads((Path(starter_model) / "config.json").read_text())["tie_word_embeddings"] is True
    sets = quick_sets(**{"deepspeed.stage": stage, "deepspeed.offload_optimizer": "none", "placement.num_ranks": ranks,
                         "train.max_steps": 2, "train.save_steps": 2, "data.eval_ratio": 0, "name": f"tied-z{stage}"})
    proc = cli("train", "configs/quickstart.yaml", *sets)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert protocol.read_status(run).state == protocol.COMPLETED

    final = run / protocol.FINAL
    ckpt = protocol.latest_checkpoint(run)
    export = Path(cli("export", str(run), check=True).stdout.strip().splitlines()[-1])
    for folder in (final, ckpt, export):
        names = weight_names(folder)
        assert EMBED in names and HEAD not in names, f"{folder.name}: tied weights stored twice under ZeRO-{stage}"
        assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is True
    # final/ and the export of the same (last) step are the same model: the export reads the fp32 ZeRO state (at
    # stage 0, which has no ZeRO state, the checkpoint's own weights).
    assert torch.allclose(logits(final), logits(export), atol=1e-5)
    assert torch.equal(logits(final), logits(ckpt))
