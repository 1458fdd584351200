"""Make a saved model's chat template speak with the trained persona when the caller gives no system prompt.

Users of plain transformers or vLLM call `apply_chat_template(messages)` without a system turn; a template with its
own default ("You are a helpful assistant") then undoes the role-play. We prepend one Jinja statement to the template:
when the conversation does not start with a system turn, the persona becomes one. A caller's own system turn still
wins, so our chat (which always passes the persona) renders exactly as before.
"""

from __future__ import annotations

import json
from pathlib import Path

MARK = "{#- persona default (role-play studio) -#}"
JINJA_FILE = "chat_template.jinja"
PERSONA_FILE = "persona.json"
"""Beside the weights of final/ and every export: the persona and base model they were trained with."""
TOKENIZER_CONFIG = "tokenizer_config.json"


def with_default_persona(template: str, persona: str) -> str:
    """The template with the persona as its default system turn (idempotent: a template that already has one gets
    the new persona instead)."""
    if template.startswith(MARK):
        template = template.split("\n", 1)[1] if "\n" in template else ""
    literal = json.dumps(persona, ensure_ascii=False)  # a valid Jinja string literal: quotes and backslashes escaped
    # One line (the literal escapes newlines), so a rewrite can drop it whole; "-%}" eats the line break after it.
    preamble = (f"{MARK}{{%- if not messages or messages[0]['role'] != 'system' -%}}"
                f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}{{%- endif -%}}\n")
    return preamble + template


def write_default_persona(model_dir: Path, persona: str) -> bool:
    """Rewrite the chat template saved in model_dir (chat_template.jinja, else tokenizer_config.json's) so the
    persona is its default system turn. False when there is no template to change (a template-less tokenizer) or
    the persona is empty."""
    if not persona:
        return False
    jinja = model_dir / JINJA_FILE
    if jinja.is_file():
        jinja.write_text(with_default_persona(jinja.read_text(encoding="utf-8"), persona), encoding="utf-8")
        return True
    config_path = model_dir / TOKENIZER_CONFIG
    if not config_path.is_file():
        return False
    config = json.loads(config_path.read_text(encoding="utf-8"))
    template = config.get("chat_template")
    if isinstance(template, str) and template:
        config["chat_template"] = with_default_persona(template, persona)
    elif isinstance(template, list):  # named templates: the default one is what apply_chat_template uses
        changed = False
        for entry in template:
            if isinstance(entry, dict) and entry.get("name") == "default" and isinstance(entry.get("template"), str):
                entry["template"] = with_default_persona(entry["template"], persona)
                changed = True
        if not changed:
            return False
    else:
        return False
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return True
