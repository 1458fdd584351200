# .venv/bin/python -m pytest tests/training/test_lora_e2e.py -q    (slow: real deepspeed LoRA runs of the starter on CPU)
"""LoRA on the same path as full fine-tuning: real `deepspeed` launches with 2 CPU ranks under ZeRO-2 and ZeRO-3,
real checkpoints, stop and resume from the adapter checkpoint, the merged export and chat from base + adapter."""

import json
import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers import cli, detach, quick_sets, wait_for
from trainer_core.common.tailing import read_all_rows
from trainer_core.runs import protocol
from trainer_core.runs.state import read_state

pytestmark = pytest.mark.slow

QUICKSTART = "configs/quickstart.yaml"
LORA = {"train.method": "lora", "placement.num_ranks": 2}
# The stop-and-resume run: room for `stop` to land after the first checkpoint (step 4) while its CLI starts, and a
# short resumed half (each step is a 2-rank step, every 4th a save).
MAX_STEPS = 30


def finished_run(proc) -> Path:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def check_adapter_folder(folder: Path, starter_model) -> dict:
    """A PEFT adapter pointing at the starter: only LoRA matrices, trained (B no longer zero), loads with
    PeftModel.from_pretrained. Returns the adapter's tensors."""
    info = json.loads((folder / "adapter_config.json").read_text())
    assert Path(info["base_model_name_or_path"]).resolve() == Path(starter_model).resolve()
    assert info["peft_type"] == "LORA" and info["r"] == 16
    weights = load_file(str(folder / "adapter_model.safetensors"))
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    assert any(v.abs().max() > 0 for k, v in weights.items() if ".lora_B." in k), "the adapter did not train"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(starter_model), str(folder))
    assert model.peft_config["default"].r == 16
    return weights


def model_states_bytes(ckpt: Path) -> int:
    return sum(f.stat().st_size for f in ckpt.glob("global_step*/*model_states.pt"))


def test_lora_two_ranks_zero2_trains_only_the_adapter_merges_and_chats(runs_root, starter_model):
    run = finished_run(cli("train", QUICKSTART, *quick_sets(**LORA, name="lora-z2")))
    status = protocol.read_status(run)
    assert status.state == protocol.COMPLETED and status.world_size == 2
    log = (run / protocol.LOG).read_text(encoding="utf-8", errors="replace")
    assert "lora: 37,376 of 9,854,016 parameters train" in log
    assert "loss: blockwise head cross-entropy" in log, "the blockwise head loss works with the frozen head"

    final = run / protocol.FINAL
    check_adapter_folder(final, starter_model)
    assert not (final / "model.safetensors").exists()
    assert (final / "tokenizer.json").is_file() and (final / "chat_template.jinja").is_file()
    persona = protocol.read_json(final / protocol.PERSONA)
    assert Path(persona["base_model"]).resolve() == Path(starter_model).resolve()

    # Checkpoints hold the adapter and its optimizer state, not the frozen base (the tied head neither: the
    # starter's 152k x 64 head alone is 39 MB).
    ckpt = protocol.complete_checkpoints(run)[-1]
    check_adapter_folder(ckpt, starter_model)
    assert 0 < model_states_bytes(ckpt) < 2**20

    # The merged export is a plain model whose logits are base + adapter's; every tensor the adapter does not
    # touch is the base's, bit for bit, and every adapted weight is the base's plus the adapter's product.
    out = finished_run(cli("export", str(run), "--merge"))
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(starter_model).state_dict()
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(starter_model), str(final)).eval()
    adapted = {n.removeprefix("base_model.model.").split(".lora_A.")[0] for n, _ in unmerged.named_parameters()
               if ".lora_A." in n}
    changed = []
    for name, tensor in merged.state_dict().items():
        if name.endswith(".weight") and name.rsplit(".", 1)[0] in adapted:  # biases stay: lora bias="none"
            changed.append(name)
            assert not torch.equal(tensor, base[name])
        else:
            assert torch.equal(tensor, base[name]), f"{name} changed though only adapters train"
    assert len(changed) == 7 * 2  # every linear of the starter's 2 blocks
    ids = torch.randint(0, 151000, (2, 32))
    with torch.no_grad():
        assert torch.allclose(unmerged(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4, rtol=0)

    step = protocol.checkpoint_step(ckpt)
    reply = cli("chat", str(run), "--checkpoint", str(step), "--prompt", "你是谁", "--max-new-tokens", "6",
                "--seed", "0", check=True)
    assert reply.stdout.strip()


def test_lora_two_ranks_zero3_with_checkpointing_completes(runs_root, starter_model):
    sets = quick_sets(**LORA, **{"deepspeed.stage": 3, "deepspeed.offload_optimizer": "none",
                                 "train.gradient_checkpointing": "true", "name": "lora-z3"})
    run = finished_run(cli("train", QUICKSTART, *sets))
    status = protocol.read_status(run)
    assert status.state == protocol.COMPLETED and status.world_size == 2
    # For the Monitor: counted whole though ZeRO-3 partitions the weights over the ranks.
    assert (status.trainable_params, status.total_params) == (37_376, 9_854_016)
    rows = [r for r in read_all_rows(run / protocol.METRICS) if r.get("loss") is not None]
    assert [r["step"] for r in rows] == list(range(1, status.total_steps + 1))
    check_adapter_folder(run / protocol.FINAL, starter_model)
    ckpt = protocol.complete_checkpoints(run)[-1]
    assert 0 < model_states_bytes(ckpt) < 2**20


def test_lora_stop_and_resume_continue_from_the_adapter_checkpoint(runs_root, starter_model):
    run = detach(*quick_sets(**LORA, **{"train.max_steps": MAX_STEPS, "train.save_steps": 4, "data.eval_ratio": 0,
                                        "name": "lora-resume"}))
    wait_for(lambda: protocol.complete_checkpoints(run), 600, "a first checkpoint")
    stopped = cli("stop", str(run), timeout=300)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    st = wait_for(lambda: (s := read_state(run)).state in protocol.TERMINAL and s, 300, "the run to stop")
    assert st.state == protocol.STOPPED
    saved = protocol.complete_checkpoints(run)[-1]
    step = protocol.checkpoint_step(saved)
    assert step < MAX_STEPS
    adapter_then = load_file(str(saved / "adapter_model.safetensors"))

    resumed = cli("resume", str(run), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from {saved.name}" in resumed.stderr
    status = protocol.read_status(run)
    assert status.state == protocol.COMPLETED and status.step == MAX_STEPS
    rows = [r for r in read_all_rows(run / protocol.METRICS) if r.get("loss") is not None]
    after = [r["step"] for r in rows if r["step"] > step]
    assert after == list(range(step + 1, MAX_STEPS + 1)), "the resumed run goes on from the checkpoint's step"
    log = (run / protocol.LOG).read_text(encoding="utf-8", errors="replace")
    assert re.search(rf"resuming from \S*{saved.name}", log)
    final = check_adapter_folder(run / protocol.FINAL, starter_model)
    assert any(not torch.equal(final[k], adapter_then[k]) for k in final), "the adapter went on training"
