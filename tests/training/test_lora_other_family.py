# .venv/bin/python -m pytest tests/training/test_lora_other_family.py -q    (slow: a real 2-rank LoRA run of a tiny Llama)
"""LoRA on a model of another family than the starter's Qwen2: a tiny Llama built here (tests/toy_chat_models.py,
its eos_token not its end-of-turn marker, its head tied to the embedding) trains through the real CLI with 2 CPU
ranks; only the adapter changes, its targets are the Llama's own projections, chat answers from base + adapter, and
`export --merge` writes a plain model that answers as base + adapter does."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers import cli
from toy_chat_models import chatml_llama, tiny_llama
from trainer_core.models.inference import GenParams, load_chat_model, stream_reply
from trainer_core.runs import protocol

pytestmark = pytest.mark.slow

PERSONA = "你是甄嬛。"
PAIRS = [("你是谁？", "我是甄嬛。"), ("皇上驾到！", "臣妾参见皇上。"), ("Hello", "Hello, how are you?"),
         ("今日天气很好", "我们去御花园走走吧。")]
# Every linear layer of a Llama block: attention's four projections and the gated MLP's three.
LLAMA_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
STEPS = 12


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lora_on_a_tiny_llama_trains_only_the_adapter_chats_and_merges(runs_root, tmp_path):
    source = tiny_llama(tmp_path / "tiny-llama", chatml_llama(), eos_token="<|im_end|>")
    weights_before = sha256(source / "model.safetensors")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "output": a}, ensure_ascii=False) + "\n"
                            for q, a in PAIRS * 4), encoding="utf-8")
    # A high rate and no optimizer offload: a few steps on 2 ranks are enough to move a tiny model's adapter.
    sets = {"name": "lora-llama", "model.path": source, "data.path": data, "data.persona": PERSONA,
            "data.eval_ratio": 0, "data.max_length": 64, "train.method": "lora", "train.max_steps": STEPS,
            "train.learning_rate": 0.01, "train.warmup_ratio": 0, "train.save_steps": STEPS,
            "train.save_total_limit": 1, "train.micro_batch_size": 4, "placement.num_ranks": 2,
            "deepspeed.offload_optimizer": "none"}
    proc = cli("train", "configs/quickstart.yaml", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
               timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = Path(proc.stdout.strip().splitlines()[-1])
    status = protocol.read_status(run)
    assert status.state == protocol.COMPLETED and status.world_size == 2 and status.step == STEPS

    # The targets come from the model itself: the Llama's seven projections, in both blocks, nothing else.
    final = run / protocol.FINAL
    info = json.loads((final / "adapter_config.json").read_text())
    assert set(info["target_modules"]) == LLAMA_LINEARS
    assert Path(info["base_model_name_or_path"]).resolve() == source.resolve()
    log = (run / protocol.LOG).read_text(encoding="utf-8", errors="replace")
    assert f"adapters on {', '.join(sorted(LLAMA_LINEARS))}" in log
    adapter = load_file(str(final / "adapter_model.safetensors"))
    assert {k.split(".lora_")[0].rsplit(".", 1)[1] for k in adapter} == LLAMA_LINEARS
    assert len(adapter) == 2 * len(LLAMA_LINEARS) * 2  # A and B of 7 layers in 2 blocks
    assert any(v.abs().max() > 0 for k, v in adapter.items() if ".lora_B." in k), "the adapter did not train"
    assert not (final / "model.safetensors").exists()
    assert sha256(source / "model.safetensors") == weights_before  # the base folder is never written

    # Chat answers from base + adapter (the CLI at the run), not from the base alone.
    params = GenParams(max_new_tokens=12, temperature=0, seed=0)
    messages = [{"role": "user", "content": PAIRS[0][0]}]
    model, tok = load_chat_model(final)
    with_adapter = "".join(stream_reply(model, tok, messages, persona=PERSONA, params=params))
    base_only = "".join(stream_reply(model, tok, messages, persona=PERSONA, params=params, adapter_off=True))
    assert with_adapter != base_only, "the adapter does not change the answer: the test could not tell them apart"
    chat = cli("chat", str(run), "--prompt", PAIRS[0][0], "--temperature", "0", "--max-new-tokens", "12",
               "--seed", "0", timeout=300)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.strip() == with_adapter.strip()

    # The merged export: a plain Llama (no adapter files, the tied head stored once) whose logits are base +
    # adapter's; every weight the adapter does not touch is the base's bit for bit, every adapted one moved.
    out = Path(cli("export", str(run), "--merge", check=True, timeout=300).stdout.strip().splitlines()[-1])
    assert not (out / "adapter_config.json").exists()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
    merged = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    assert type(merged).__name__ == "LlamaForCausalLM" and not hasattr(merged, "peft_config")
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    base = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True).state_dict()
    changed = []
    for name, tensor in merged.state_dict().items():
        if name.rsplit(".", 2)[-2] in LLAMA_LINEARS:
            changed.append(name)
            assert not torch.equal(tensor, base[name]), f"{name}: the adapter was not merged into it"
        else:
            assert torch.equal(tensor, base[name]), f"{name} changed though only the adapter trains"
    assert len(changed) == 2 * len(LLAMA_LINEARS)
    ids = torch.randint(0, len(tok), (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4, rtol=0)
