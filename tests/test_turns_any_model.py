# .venv/bin/python -m pytest tests/test_turns_any_model.py -q    (one slow test: a real deepspeed run of a tiny Llama)
"""A non-Qwen model end to end: a Llama with a ChatML tokenizer whose eos_token is not `<|im_end|>` learns to stop.

The tokenizer is the shape that broke before: `<|im_end|>` is special in the tokenizer but missing from the named
special tokens, and eos_token is `<|im_start|>`; labels found through eos_token trained no end-of-turn at all.
"""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import cli
from toy_chat_models import chatml_llama, tiny_llama
from trainer_core.runs import protocol
from trainer_core.data.chat_format import prompt_ids

pytestmark = pytest.mark.slow

PERSONA = "你是甄嬛。"
PAIRS = [("你是谁？", "我是甄嬛。"), ("皇上驾到！", "臣妾参见皇上。"), ("Hello", "Hello, how are you?"),
         ("今日天气很好", "我们去御花园走走吧。")]


def test_tiny_llama_learns_to_end_its_turn(runs_root, tmp_path):
    source = tiny_llama(tmp_path / "tiny-llama", chatml_llama(), eos_token="<|im_end|>")
    source_config = json.loads((source / "config.json").read_text())
    source_gen = json.loads((source / "generation_config.json").read_text())
    # The tokenizer disagrees with the model (eos <|im_start|> and pad </s>): what made the Trainer rewrite the ids.
    assert source_config["eos_token_id"] != chatml_llama().eos_token_id and "pad_token_id" not in source_gen
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "output": a}, ensure_ascii=False) + "\n"
                            for q, a in PAIRS * 4), encoding="utf-8")
    sets = {"name": "tiny-llama", "model.path": source, "data.path": data, "data.persona": PERSONA,
            "data.eval_ratio": 0, "data.max_length": 64, "train.max_steps": 60, "train.learning_rate": 0.01,
            "train.warmup_ratio": 0, "train.save_steps": 60, "train.save_total_limit": 1, "train.micro_batch_size": 4}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    proc = cli("train", "configs/quickstart.yaml", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = Path(proc.stdout.strip().splitlines()[-1])
    final = run / protocol.FINAL

    # The source model's token ids survive training (no "Updated tokens" rewrite by the Trainer), in final/ and in
    # the checkpoint.
    checkpoint = protocol.complete_checkpoints(run)[-1]
    for folder in (final, checkpoint):
        for name, before in (("config.json", source_config), ("generation_config.json", source_gen)):
            after = json.loads((folder / name).read_text())
            for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
                assert after.get(key) == before.get(key), (folder.name, name, key)
    assert "Updated tokens" not in (run / protocol.LOG).read_text(encoding="utf-8", errors="replace")

    # Greedy replies end on their own: the last generated token is the template's <|im_end|>.
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final, use_safetensors=True).eval()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end != tok.eos_token_id
    answers = {a for _, a in PAIRS}
    for question, _ in PAIRS:
        ids = torch.tensor([prompt_ids(tok, [{"role": "user", "content": question}], PERSONA)])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False,
                                 eos_token_id=[im_end], pad_token_id=tok.pad_token_id)
        reply = out[0, ids.shape[1]:].tolist()
        assert reply[-1] == im_end and len(reply) < 40, tok.decode(reply)
        assert tok.decode(reply[:-1]) in answers  # a tiny model may mix the pairs up; it must still stop

    # The CLI chat says which system prompt it used and stops by itself too.
    chat = cli("chat", str(run), "--prompt", PAIRS[0][0], "--temperature", "0", "--max-new-tokens", "40", timeout=300)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.strip() in answers and "persona: the one the run was trained with" in chat.stderr

    # export: the persona travels with the weights, DeepSpeed's helper script does not.
    out = Path(cli("export", str(run), check=True, timeout=300).stdout.strip().splitlines()[-1])
    assert protocol.read_json(out / "persona.json")["persona"] == PERSONA
    assert not (out / "zero_to_fp32.py").exists() and (out / "model.safetensors").is_file()
