# .venv/bin/python -m pytest tests/data/test_template_fill.py -q
"""Skeleton rendering (data/template_fill) gives Jinja's text exactly, and only for templates it can prove that for."""

import random

import pytest

from trainer_core.data import chat_template
from trainer_core.data.chat_format import encode_conversations
from trainer_core.data.light_tokenizer import compile_template
from trainer_core.data.template_fill import FillRenderer, content_independent

CHATML = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
          "{%- endif %}")
# In the manner of Qwen2.5's: a default system turn, an empty answer rendered differently, a role check that raises.
DEFAULT_SYSTEM = """{%- if messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and not loop.first %}{{ raise_exception('system must come first') }}{% endif %}
{%- if message.role != 'system' %}
{%- if message.content %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- else %}{{- '<|im_start|>' + message.role + '\\n<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""
TILDE = ("{% for m in messages[1:] %}[{{ m.role }}]{{ m.content ~ '</s>' }}{% endfor %}"
         "{{ messages|length }}{{ 'END' if messages[-1].content else 'EMPTY' }}")

NOT_PROVEN = {
    "trim": "{% for m in messages %}{{ m['content'] | trim }}<|eot_id|>{% endfor %}",
    "method": "{% for m in messages %}{{ m.content.split('</think>')[-1] }}<|im_end|>{% endfor %}",
    "test": "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% endif %}{% endfor %}",
    "filter block": "{% for m in messages %}{% filter upper %}{{ m.content }}{% endfilter %}{% endfor %}",
    "captured": "{% for m in messages %}{% set x %}{{ m.content }}{% endset %}{{ x }}{% endfor %}",
    "tojson": "{{ messages | tojson }}",
    "macro": "{% macro show(m) %}{{ m.content }}{% endmacro %}{% for m in messages %}{{ show(m) }}{% endfor %}",
    "rebound": "{% set messages = messages[1:] %}{% for m in messages %}{{ m.content }}{% endfor %}",
    "compared": "{% for m in messages %}{% if m.content == 'x' %}X{% endif %}{{ m.content }}{% endfor %}",
    "or": "{% for m in messages %}{{ m.content or '-' }}{% endfor %}",
    "in": "{% for m in messages %}{% if '<tool>' in m.content %}T{% endif %}{{ m.content }}{% endfor %}",
    "syntax error": "{% for m in messages %}{{ m.content }",
}


def jinja(source):
    template = compile_template(source)
    return lambda conversations, agp: [template.render(messages=c, add_generation_prompt=agp, bos_token="<s>")
                                       for c in conversations]


def random_conversations(seed: int, n: int):
    rng = random.Random(seed)
    words = ["甄嬛", "皇上", "<|im_end|>", "{{ x }}", "\n", " ", "", "\ue000", "\ue0011\ue001", "a", "{% if %}", "'"]
    out = []
    for _ in range(n):
        turns = rng.choice([["user", "assistant"], ["system", "user", "assistant"],
                            ["system", "user", "assistant", "user", "assistant"], ["user"]])
        out.append([{"role": r, "content": "".join(rng.choice(words) for _ in range(rng.randint(0, 6)))}
                    for r in turns])
    return out


@pytest.mark.parametrize("source", [CHATML, DEFAULT_SYSTEM, TILDE], ids=["chatml", "default-system", "tilde"])
@pytest.mark.parametrize("agp", [False, True])
def test_filled_text_is_jinjas(source, agp):
    assert content_independent(source)
    render = jinja(source)
    filler = FillRenderer(render)
    conversations = random_conversations(1, 400)
    assert filler.render(conversations, agp) == render(conversations, agp)
    # Every shape went through a skeleton, not back to Jinja (an all-empty conversation has one too).
    assert filler.skeletons and all(s is not None for s in filler.skeletons.values())


@pytest.mark.parametrize("name", sorted(NOT_PROVEN))
def test_templates_that_use_contents_otherwise_are_left_to_jinja(name):
    assert not content_independent(NOT_PROVEN[name])


def test_a_shape_the_template_refuses_renders_through_jinja_and_raises_there():
    render = jinja(DEFAULT_SYSTEM)
    filler = FillRenderer(render)
    bad = [{"role": "user", "content": "q"}, {"role": "system", "content": "late"}]
    with pytest.raises(Exception, match="system must come first"):
        filler.render([bad])
    good = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert filler.render([good]) == render([good], False)


def test_messages_with_other_fields_or_types_render_through_jinja():
    calls = []
    render = jinja(CHATML)
    filler = FillRenderer(lambda c, agp: calls.append(len(c)) or render(c, agp))
    class Text(str):
        pass

    odd = [[{"role": "user", "content": "q", "name": "x"}], [{"role": "user", "content": Text("q")}]]
    assert filler.render(odd) == render(odd, False)
    assert calls == [2]  # both conversations, in one Jinja call; no skeleton was built for them


def test_encoding_is_unchanged_by_the_fill_path(starter_tokenizer, monkeypatch):
    """The starter's real tokenizer (transformers): ids and labels with skeletons equal those with Jinja alone."""
    assert chat_template._fill_renderer(starter_tokenizer) is not None
    conversations = [c for c in random_conversations(2, 300) if c[-1]["role"] == "assistant"]
    fast = encode_conversations(starter_tokenizer, conversations, persona="你是甄嬛。", max_length=64)
    monkeypatch.setattr(chat_template, "_fill_renderer", lambda tokenizer: None)
    slow = encode_conversations(starter_tokenizer, conversations, persona="你是甄嬛。", max_length=64)
    assert [(e.input_ids, e.labels, e.truncated) for e in fast] == [(e.input_ids, e.labels, e.truncated) for e in slow]
