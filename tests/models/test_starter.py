# .venv/bin/python -m pytest tests/models/test_starter.py -q
"""The starter model and tokenizer, built for real: ids must match Qwen's, files must be what loaders expect."""

import unicodedata
import zipfile

import pytest
import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from trainer_core.common import paths

from trainer_core.models import starter, tokenizer
from trainer_core.common.errors import UserError

MIXED = [
    "你好，世界! Hello 123",
    "皇上，臣妾做不到啊！ 甄嬛传第 76 集。",
    "  two  spaces\n\n\tand a tab, I'LL say it's 2024-05-01 3.14159\r\n",
    "def f(x):\n    return x ** 2  # 注释 😀\n",
]


@pytest.fixture(scope="module")
def reference_encoding():
    ranks = load_tiktoken_bpe(str(tokenizer.ensure_qwen_vocab()))
    return tiktoken.Encoding(
        name="qwen", pat_str=tokenizer.QWEN_PATTERN, mergeable_ranks=ranks, special_tokens=tokenizer.SPECIAL_TOKENS
    )


def test_special_tokens_and_sizes(starter_model, starter_tokenizer):
    tok = starter_tokenizer
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert len(tok) == 151646
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert tok.model_max_length == 2048
    assert AutoModelForCausalLM.from_pretrained(starter_model).config.vocab_size == 151936


def test_known_ids(starter_tokenizer):
    ids = starter_tokenizer("你好，世界! Hello 123", add_special_tokens=False)["input_ids"]
    # 你好 ， 世界 ! ␠Hello ␠ 1 2 3: digits are single tokens in Qwen.
    assert ids == [108386, 3837, 99489, 0, 21927, 220, 16, 17, 18]


@pytest.mark.parametrize("text", MIXED)
def test_same_ids_as_tiktoken_and_round_trip(starter_tokenizer, reference_encoding, text):
    ids = starter_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == reference_encoding.encode_ordinary(unicodedata.normalize("NFC", text))
    assert starter_tokenizer.decode(ids) == text


def test_special_tokens_in_text_match_tiktoken(starter_tokenizer, reference_encoding):
    text = "<|im_start|>user\n你好<|im_end|>\n<|endoftext|>"
    ids = starter_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == reference_encoding.encode(text, allowed_special="all")


def test_chat_template_is_plain_chatml(starter_tokenizer):
    messages = [{"role": "user", "content": "你好"}]
    text = starter_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"  # no default system prompt


def test_prepare_models_builds_once_and_loads(monkeypatch, tmp_path, starter_model):
    # starter_model first, so the tokenizer cache is warm and only the model is built here.
    monkeypatch.setattr(paths, "STARTER_MODEL_DIR", tmp_path / "qwen2-starter")
    first = starter.prepare_models()
    built = (first / "model.safetensors").stat()
    assert starter.prepare_models() == first == tmp_path / "qwen2-starter"
    again = (first / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)  # not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen2-starter"]  # no temp dir left behind
    names = {p.name for p in first.iterdir()}
    assert {"READY", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(name.startswith("pytorch_model") for name in names)

    model = AutoModelForCausalLM.from_pretrained(first)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.tie_word_embeddings and model.config.hidden_size == 64
    gen = GenerationConfig.from_pretrained(first)
    assert 151645 in gen.eos_token_id and gen.pad_token_id == 151643
    tok = AutoTokenizer.from_pretrained(first)
    assert "<|im_start|>" in tok.chat_template  # stored in tokenizer_config.json, loads back
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 3)


def test_prepare_models_force_rebuilds_same_weights(monkeypatch, tmp_path, starter_model):
    monkeypatch.setattr(paths, "STARTER_MODEL_DIR", tmp_path / "qwen2-starter")
    before = (starter.prepare_models() / "model.safetensors").read_bytes()
    after = (starter.prepare_models(force=True) / "model.safetensors").read_bytes()
    assert before == after  # fixed seed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen2-starter"]


def test_vocab_override_must_be_qwens(monkeypatch, tmp_path):
    wrong = tmp_path / "qwen.tiktoken"
    wrong.write_text("not a vocabulary\n")
    monkeypatch.setenv("QWEN_TIKTOKEN_FILE", str(wrong))
    with pytest.raises(UserError, match="sha256"):
        tokenizer.ensure_qwen_vocab()
    monkeypatch.setenv("QWEN_TIKTOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="does not exist"):
        tokenizer.ensure_qwen_vocab()


def test_vocab_from_wheel_checks_hash(tmp_path):
    wheel = tmp_path / "dashscope-2.0.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(tokenizer.VOCAB_IN_WHEEL, b"tampered")
    with pytest.raises(UserError, match="sha256"):
        tokenizer._vocab_from_wheel(wheel)


def test_remote_code_fixture_needs_trust(remote_code_model):
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(remote_code_model, trust_remote_code=False)
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoTokenizer.from_pretrained(remote_code_model, trust_remote_code=False)


def test_remote_code_fixture_loads_like_qwen_7b_chat(remote_code_model, reference_encoding):
    tok = AutoTokenizer.from_pretrained(remote_code_model, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(remote_code_model, trust_remote_code=True)
    assert type(model).__name__ == "TinyQwenForCausalLM" and not model.supports_gradient_checkpointing
    assert (remote_code_model / "model.safetensors").exists()
    assert tok.chat_template is None and tok.eos_token is None
    assert (tok.eod_id, tok.im_start_id, tok.im_end_id) == (151643, 151644, 151645)
    ids = tok("你好，世界! Hello 123", add_special_tokens=False)["input_ids"]
    assert ids == reference_encoding.encode_ordinary("你好，世界! Hello 123")
    assert tok.decode(ids) == "你好，世界! Hello 123"

    batch = torch.tensor([ids])
    loss = model(batch, labels=batch).loss
    assert torch.isfinite(loss)
    out = model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=2, do_sample=False)
    assert out.shape == (1, len(ids) + 2)
