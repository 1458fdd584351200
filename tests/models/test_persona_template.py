"""A saved model's chat template speaks with the trained persona when no system prompt is given
(pytest tests/models/test_persona_template.py)."""

import shutil

import pytest
from transformers import AutoTokenizer

from trainer_core.data.chat_template import turn_format
from trainer_core.models.persona_template import with_default_persona, write_default_persona

PERSONA = '现在你要扮演皇帝身边的女人--甄嬛 "quoted" \\ {{ not jinja }} {% raw %}\nsecond line'


@pytest.fixture
def tokenizer_dir(starter_model, tmp_path):
    for f in starter_model.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy2(f, tmp_path / f.name)
    return tmp_path


def test_persona_becomes_the_default_system_turn_and_a_given_one_still_wins(tokenizer_dir):
    before = AutoTokenizer.from_pretrained(tokenizer_dir)
    user = [{"role": "user", "content": "你是谁？"}]
    system = [{"role": "system", "content": "另一个系统提示"}] + user
    original_default = before.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    original_given = before.apply_chat_template(system, tokenize=False, add_generation_prompt=True)
    assert PERSONA not in original_default

    assert write_default_persona(tokenizer_dir, PERSONA)
    after = AutoTokenizer.from_pretrained(tokenizer_dir)
    rendered = after.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    # The persona, character for character (quotes, backslash, Jinja-looking text, newline), as the system turn.
    assert rendered == before.apply_chat_template([{"role": "system", "content": PERSONA}] + user, tokenize=False,
                                                  add_generation_prompt=True)
    assert after.apply_chat_template(system, tokenize=False, add_generation_prompt=True) == original_given
    # The end-of-turn marker is still read from the template (our chat and training depend on it).
    assert turn_format(after) == turn_format(before)


def test_rewriting_replaces_the_persona_instead_of_stacking_it():
    once = with_default_persona("{{ messages }}", "A")
    twice = with_default_persona(once, "B")
    assert twice == with_default_persona("{{ messages }}", "B")


def test_no_template_or_no_persona_changes_nothing(tmp_path):
    assert not write_default_persona(tmp_path, "甄嬛")
    (tmp_path / "tokenizer_config.json").write_text('{"model_max_length": 8}', encoding="utf-8")
    assert not write_default_persona(tmp_path, "甄嬛")
    assert not write_default_persona(tmp_path, "")
