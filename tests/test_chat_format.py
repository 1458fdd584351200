# .venv/bin/python -m pytest tests/test_chat_format.py -q
"""Label masks on real tokenizers: only assistant content and its <|im_end|> are trained, in both layouts."""

import random
import time

import pytest
from transformers import AutoTokenizer

from trainer_core.chat_format import IGNORE_INDEX, encode_conversations, prompt_ids, render_mask, with_persona

PERSONA = "你是甄嬛，大理寺少卿甄远道之女。"
ONE_TURN = [
    {"role": "user", "content": "小主，今日可好？"},
    {"role": "assistant", "content": "本宫今日心情甚好。"},
]
MULTI_TURN = [
    {"role": "system", "content": "你是华妃。"},
    {"role": "user", "content": "娘娘，皇上来了。"},
    {"role": "assistant", "content": "快，扶本宫起来。"},
    {"role": "user", "content": "Hello, 123?"},
    {"role": "assistant", "content": "Say it again: 4 5 6!"},
    {"role": "user", "content": "是吗？是。"},
    {"role": "assistant", "content": "是。"},  # also appears inside the user turn before it
]


@pytest.fixture(scope="module")
def remote_tokenizer(remote_code_model):
    return AutoTokenizer.from_pretrained(remote_code_model, trust_remote_code=True)


def trained_runs(tokenizer, enc):
    """Decoded text of each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(enc.input_ids, enc.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


def answers(messages):
    return [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]


def chatml(messages):
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


@pytest.mark.parametrize("conversation", [ONE_TURN, MULTI_TURN], ids=["one-turn", "multi-turn"])
def test_template_ids_and_mask(starter_tokenizer, conversation):
    [enc] = encode_conversations(starter_tokenizer, [conversation], persona=PERSONA, max_length=2048)
    messages = with_persona(conversation, PERSONA)
    assert enc.input_ids == starter_tokenizer.apply_chat_template(messages, tokenize=True)
    assert trained_runs(starter_tokenizer, enc) == answers(conversation)  # every assistant turn, nothing else
    assert enc.n_label_tokens == sum(label != IGNORE_INDEX for label in enc.labels)
    assert not enc.truncated and not enc.answer_lost


@pytest.mark.parametrize("conversation", [ONE_TURN, MULTI_TURN], ids=["one-turn", "multi-turn"])
def test_chatml_path_gives_qwen_layout(remote_tokenizer, starter_tokenizer, conversation):
    [enc] = encode_conversations(remote_tokenizer, [conversation], persona=PERSONA, max_length=2048)
    messages = with_persona(conversation, PERSONA)
    assert remote_tokenizer.decode(enc.input_ids) == chatml(messages)
    assert trained_runs(remote_tokenizer, enc) == answers(conversation)
    # Same vocabulary, same layout: for ordinary text both paths give the same ids and labels.
    [templated] = encode_conversations(starter_tokenizer, [conversation], persona=PERSONA, max_length=2048)
    assert (enc.input_ids, enc.labels) == (templated.input_ids, templated.labels)


def test_persona_and_own_system(starter_tokenizer):
    own = [{"role": "system", "content": "你是安陵容。"}, *ONE_TURN]
    persona_first, with_own = encode_conversations(starter_tokenizer, [ONE_TURN, own], persona=PERSONA, max_length=512)
    assert starter_tokenizer.decode(persona_first.input_ids).startswith(f"<|im_start|>system\n{PERSONA}<|im_end|>\n")
    assert PERSONA not in starter_tokenizer.decode(with_own.input_ids)
    assert starter_tokenizer.decode(with_own.input_ids).startswith("<|im_start|>system\n你是安陵容。<|im_end|>")
    [no_persona] = encode_conversations(starter_tokenizer, [ONE_TURN], persona="", max_length=512)
    assert starter_tokenizer.decode(no_persona.input_ids).startswith("<|im_start|>user\n")


@pytest.mark.parametrize("which", ["template", "chatml"])
def test_truncation_flags(starter_tokenizer, remote_tokenizer, which):
    tok = starter_tokenizer if which == "template" else remote_tokenizer
    [full] = encode_conversations(tok, [ONE_TURN], persona=PERSONA, max_length=2048)
    first_label = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    [part] = encode_conversations(tok, [ONE_TURN], persona=PERSONA, max_length=first_label + 2)
    assert part.truncated and not part.answer_lost and part.n_label_tokens == 2
    assert len(part.input_ids) == len(part.labels) == first_label + 2
    [lost] = encode_conversations(tok, [ONE_TURN], persona=PERSONA, max_length=first_label)
    assert lost.truncated and lost.answer_lost and lost.n_label_tokens == 0
    [exact] = encode_conversations(tok, [ONE_TURN], persona=PERSONA, max_length=len(full.input_ids))
    assert not exact.truncated and exact.n_label_tokens == full.n_label_tokens


def test_answer_with_leading_newlines_keeps_header_untrained(starter_tokenizer):
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\n  好的"}]
    [enc] = encode_conversations(starter_tokenizer, [conversation], persona="", max_length=64)
    assert enc.input_ids == starter_tokenizer.apply_chat_template(conversation, tokenize=True)
    header_end = starter_tokenizer.convert_tokens_to_ids("assistant")
    assert enc.labels[: enc.input_ids.index(header_end) + 1] == [IGNORE_INDEX] * (enc.input_ids.index(header_end) + 1)
    assert trained_runs(starter_tokenizer, enc)[-1].endswith("好的<|im_end|>")


def test_prompt_ids_end_with_assistant_header(starter_tokenizer, remote_tokenizer):
    history = ONE_TURN + [{"role": "user", "content": "再说一遍。"}]
    expected = chatml([{"role": "system", "content": PERSONA}, *history]) + "<|im_start|>assistant\n"
    templated = prompt_ids(starter_tokenizer, history, PERSONA)
    assert starter_tokenizer.decode(templated) == expected
    assert prompt_ids(remote_tokenizer, history, PERSONA) == templated


def test_render_mask_shows_whole_characters(starter_tokenizer):
    # 鱻 is two byte-level tokens, neither of which decodes alone.
    assert len(starter_tokenizer("鱻", add_special_tokens=False)["input_ids"]) == 2
    conversation = [{"role": "user", "content": "鱻"}, {"role": "assistant", "content": "甄嬛 ok 鱻"}]
    [enc] = encode_conversations(starter_tokenizer, [conversation], persona="", max_length=64)
    pieces = render_mask(starter_tokenizer, enc)
    assert "".join(text for text, _ in pieces) == starter_tokenizer.decode(enc.input_ids)
    assert ("鱻", False) in pieces and (" 鱻", True) in pieces
    assert "".join(text for text, trained in pieces if trained) == "甄嬛 ok 鱻<|im_end|>"


def test_encodes_a_dataset_quickly(starter_tokenizer):
    rnd = random.Random(0)
    chars = "皇上臣妾做不到啊你好世界本宫今日心情甚好，。！？ abcdefg 0123456789"

    def text(n):
        return "".join(rnd.choice(chars) for _ in range(n))

    data = [
        [
            {"role": "user", "content": text(rnd.randint(5, 60))},
            {"role": "assistant", "content": text(rnd.randint(5, 120))},
        ]
        for _ in range(3729)
    ]
    t0 = time.perf_counter()
    encoded = encode_conversations(starter_tokenizer, data, persona=PERSONA, max_length=512)
    elapsed = time.perf_counter() - t0
    assert len(encoded) == 3729 and all(e.n_label_tokens > 0 for e in encoded)
    assert elapsed < 4.0, f"{elapsed:.2f}s"  # about 0.5 s when the machine is idle; slack for shared CPUs


# A template in the style of real ones: a default system prompt when none is given, answers trimmed.
TRIMMING_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}<|im_start|>system\n是。你是助手。<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ (m['content'] | trim) if m['role'] == 'assistant' else m['content'] }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def test_template_that_adds_text_and_trims(starter_model):
    tok = AutoTokenizer.from_pretrained(starter_model)
    tok.chat_template = TRIMMING_TEMPLATE
    conversation = [{"role": "user", "content": "是吗？是。"}, {"role": "assistant", "content": "  是。 "}]
    [enc] = encode_conversations(tok, [conversation], persona="", max_length=128)
    assert enc.input_ids == tok.apply_chat_template(conversation, tokenize=True)
    assert trained_runs(tok, enc) == ["是。<|im_end|>"]  # not the 是。 in the system prompt or the question


def test_conversation_without_answer_is_flagged(starter_tokenizer, remote_tokenizer):
    for tok in (starter_tokenizer, remote_tokenizer):
        [enc] = encode_conversations(tok, [ONE_TURN[:1]], persona=PERSONA, max_length=128)
        assert enc.answer_lost and not enc.truncated and enc.n_label_tokens == 0
