# .venv/bin/python -m pytest tests/test_train_e2e.py -q    (slow: real deepspeed runs of the starter model on CPU)
"""The engine end to end: real `deepspeed` launches through the CLI, real checkpoints, real chat and export."""

import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import cli, quick_sets
from trainer_core.runs import protocol
from trainer_core.config.run_config import DEFAULT_PERSONA, load_config
from trainer_core.data.step_estimate import estimate_total_steps
from trainer_core.common.tailing import read_all_rows

pytestmark = pytest.mark.slow

QUICKSTART = "configs/quickstart.yaml"


def finished_run(proc) -> Path:
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = Path(proc.stdout.strip().splitlines()[-1])  # the run directory is the last line
    assert (run / protocol.CONFIG).is_file()
    return run


def logged(run: Path, pattern: str) -> re.Match:
    m = re.search(pattern, (run / protocol.LOG).read_text(encoding="utf-8", errors="replace"))
    assert m, f"{pattern!r} not in train.log"
    return m


def test_one_rank_zero2_offload_trains_chats_and_exports(runs_root, starter_model):
    run = finished_run(cli("train", QUICKSTART, *quick_sets(), "--set", "name=one-rank"))
    status = protocol.read_status(run)
    assert status.state == protocol.COMPLETED and status.exit_code == 0

    rows = [r for r in read_all_rows(run / protocol.METRICS) if r.get("loss") is not None]
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, status.total_steps + 1)), "one metrics line per step, rank 0 only"
    assert estimate_total_steps(load_config(run / protocol.CONFIG)) == status.total_steps  # the Monitor's estimate
    losses = [r["loss"] for r in rows]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, f"loss did not fall: {losses}"
    assert all(len(r["peak_mem_bytes"]) == 1 for r in rows)
    assert any(r.get("eval_loss") is not None for r in read_all_rows(run / protocol.METRICS))

    # Checkpoints: only complete ones, at most save_total_limit (2) kept.
    ckpts = protocol.complete_checkpoints(run)
    assert 1 <= len(ckpts) <= 2
    assert all((c / protocol.COMPLETE_MARKER).is_file() for c in ckpts)

    # final/ is an ordinary HF model directory.
    final = run / protocol.FINAL
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert (final / "model.safetensors").is_file() and not list(final.glob("*.bin"))
    assert protocol.read_json(final / "persona.json")["persona"] == DEFAULT_PERSONA
    trained = model.state_dict()["model.embed_tokens.weight"]
    base = AutoModelForCausalLM.from_pretrained(starter_model).state_dict()["model.embed_tokens.weight"]
    assert not torch.equal(trained, base), "final/ holds the untrained weights"

    reply = cli("chat", str(run), "--prompt", "你是谁", "--max-new-tokens", "12", "--seed", "0", check=True)
    assert reply.stdout.strip(), "chat printed no reply"

    # export consolidates the newest ZeRO checkpoint with DeepSpeed's tooling into loadable safetensors.
    out = Path(cli("export", str(run), check=True).stdout.strip().splitlines()[-1])
    assert out.parent == run / "exports" and (out / "model.safetensors").is_file()
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    saved = load_file(str(ckpts[-1] / "model.safetensors"))
    assert torch.allclose(exported["model.norm.weight"], saved["model.norm.weight"])
    assert torch.allclose(exported["model.layers.0.mlp.up_proj.weight"], saved["model.layers.0.mlp.up_proj.weight"])


def test_two_ranks_zero3_shards_the_data(runs_root):
    sets = quick_sets(**{"deepspeed.stage": 3, "deepspeed.offload_optimizer": "none", "placement.num_ranks": 2,
                         "name": "two-ranks"})
    run = finished_run(cli("train", QUICKSTART, *sets))
    status = protocol.read_status(run)
    assert status.state == protocol.COMPLETED and status.world_size == 2

    n_rows = int(logged(run, r"(\d+) training rows").group(1))
    n_labels = int(logged(run, r"(\d+) label tokens").group(1))
    # Sharded: each optimizer step consumes micro x 2 ranks rows; unsharded it would be micro rows.
    micro = load_config(run / protocol.CONFIG).train.micro_batch_size
    assert status.total_steps == math.ceil(n_rows / (micro * 2)) < math.ceil(n_rows / micro)
    # The Monitor's estimate before training starts is what the trainer then reports.
    assert estimate_total_steps(load_config(run / protocol.CONFIG)) == status.total_steps
    rows = [r for r in read_all_rows(run / protocol.METRICS) if r.get("loss") is not None]
    assert [r["step"] for r in rows] == list(range(1, status.total_steps + 1)), "only rank 0 writes metrics"
    assert all(len(r["peak_mem_bytes"]) == 2 for r in rows), "every rank reports its peak memory"
    # Across both ranks the epoch saw every label token about once (the sampler may pad the last batch).
    assert n_labels <= rows[-1]["label_tokens"] <= 1.25 * n_labels

    model = AutoModelForCausalLM.from_pretrained(run / protocol.FINAL)
    assert model.config.vocab_size == 151936
    # ZeRO-3 gathered real 16-bit weights on save: not empty, not placeholder shapes.
    assert model.state_dict()["model.embed_tokens.weight"].shape == (151936, 64)
