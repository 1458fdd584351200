"""One record at a time: recognise its format, turn it into a conversation, and say what is wrong with it.

Three record formats are understood, detected per record (a file may mix them):

- alpaca (the huanhuan.json format): ``{"instruction", "input"?, "output", "system"?, "history"?: [[q, a], ...]}``
- messages: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
- sharegpt: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...], "system"?}``

A record's problems are ``RowError``s whose message is a coded ``Text`` (the dashboard shows it in Chinese, the CLI
in English). The file-level view (reading, counting, duplicates) is ``dataset.py``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trainer_core.data.records import json_type
from trainer_core.common.errors import Text, text

MAX_PER_KIND = 50
"""Problems kept per kind (same field, same message code); the rest are counted."""

ALPACA_FIELDS = {"instruction", "input", "output", "system", "history"}
MESSAGES_FIELDS = {"messages"}
SHAREGPT_FIELDS = {"conversations", "system"}
MESSAGES_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
# Roles of tool-calling formats (OpenAI, ShareGPT/LLaMA-Factory, Llama 3): not trained here, so such records are
# left out and counted apart from other errors.
TOOL_ROLES = {"tool", "function", "function_call", "observation", "ipython", "tool_call", "tool_response"}
TOOL_CALL = "data.tool_call_turn"
"""The code of the problem "tool-call turns are not trained", counted apart (DataReport.n_tool_call_rows)."""
DUPLICATE = "data.duplicate"
"""The code of the warning "duplicate of row N"."""


@dataclass
class RowError:
    """One problem with one record. ``row`` is 1-based: the record's position in a .json array or in a
    Parquet/CSV/save_to_disk table (a CSV header is not counted), or its line number in a .jsonl file.
    ``field`` names the offending field ("" for the record as a whole)."""

    row: int
    field: str
    message: Text
    """What is wrong, as a coded sentence (``str()`` is the English)."""

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", {self.field}" if self.field else "")
        return f"{where}: {self.message}"

    @property
    def kind(self) -> str:
        """The problem without its particulars: "history[3]" and "history[7]" or "row 12" and "row 40" match."""
        field = re.sub(r"\[\d+\]", "[]", re.sub(r"^turn \d+$", "turn", self.field))
        return field + "|" + self.message.code

    def to_dict(self) -> dict:
        """JSON-able: the English sentence and its code."""
        return {"row": self.row, "field": self.field, "message": str(self.message), "code": self.message.code}


class Problems(list):
    """RowErrors as a list that keeps the first ``per_kind`` of each kind and counts every one, so a file with a
    million bad rows reports precisely without holding a million messages."""

    def __init__(self, items=(), per_kind: int = MAX_PER_KIND):
        super().__init__()
        self.per_kind = per_kind
        self.counts: dict[str, int] = {}
        self.total = 0
        self.extend(items)

    def append(self, problem: RowError) -> None:
        n = self.counts.get(problem.kind, 0) + 1
        self.counts[problem.kind] = n
        self.total += 1
        if n <= self.per_kind:
            super().append(problem)

    def extend(self, problems) -> None:
        for p in problems:
            self.append(p)


def validate_record(record, row: int, errors: list, warnings: list,
                    max_chars: int) -> tuple[str | None, list[dict] | None]:
    """Return (format, conversation); conversation is None when the record has errors (added to ``errors``)."""
    found: list[RowError] = []
    if not isinstance(record, dict):
        errors.append(RowError(row, "", text("data.record_not_object", "record is {type}; expected an object",
                                             type=json_type(record))))
        return None, None
    if "messages" in record:
        fmt, known = "messages", MESSAGES_FIELDS
        conversation = _turns(record["messages"], "messages", "role", "content", MESSAGES_ROLES, row, found)
    elif "conversations" in record:
        fmt, known = "sharegpt", SHAREGPT_FIELDS
        conversation = _from_sharegpt(record, row, found)
    elif "instruction" in record or "output" in record:
        fmt, known = "alpaca", ALPACA_FIELDS
        conversation = _from_alpaca(record, row, found)
    else:
        errors.append(RowError(row, "", text(
            "data.unrecognised_record",
            'unrecognised record; expected "instruction"/"output", "messages" or "conversations"')))
        return None, None
    for key in record:
        if key not in known:
            warnings.append(RowError(row, key, text("data.unknown_field",
                                                    "unknown field ignored (a {format} record uses {known})",
                                                    format=fmt, known=sorted(known))))
    if conversation is not None:
        _check_conversation(conversation, row, found, max_chars)
        warnings.extend(placeholder_warnings(conversation, row))
    errors.extend(found)
    return fmt, (conversation if not found else None)


def _string(record: dict, key: str, row: int, errors: list, *, required: bool, where: str = "") -> str | None:
    """Fetch a string field, recording a missing or non-string value as an error. ``where`` prefixes the name."""
    name = where + key
    if key not in record:
        if required:
            errors.append(RowError(row, name, text("data.field_missing", "required field is missing")))
        return None
    value = record[key]
    if not isinstance(value, str):
        errors.append(RowError(row, name, text("data.not_a_string", "must be a string, got {type}",
                                               type=json_type(value))))
        return None
    return value


def _from_alpaca(record: dict, row: int, errors: list) -> list[dict] | None:
    instruction = _string(record, "instruction", row, errors, required=True)
    extra_input = _string(record, "input", row, errors, required=False)
    output = _string(record, "output", row, errors, required=True)
    system = _string(record, "system", row, errors, required=False)
    if instruction is not None and not instruction.strip():
        errors.append(RowError(row, "instruction", text("data.empty_instruction",
                                                        "is empty; it is what the user says")))
    if output is not None and not output.strip():
        errors.append(RowError(row, "output", text("data.empty_output", "is empty; it is the reply the model learns")))
    history = record.get("history", [])
    turns: list[dict] = []
    if not isinstance(history, list):
        errors.append(RowError(row, "history", text(
            "data.history_not_array", "must be an array of [question, answer] pairs, got {type}",
            type=json_type(history))))
        history = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            errors.append(RowError(row, f"history[{i}]", text("data.history_pair",
                                                              "must be a [question, answer] pair of strings")))
            continue
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    if errors:
        return None
    user = instruction + ("\n" + extra_input if extra_input else "")
    head = [{"role": "system", "content": system}] if system else []
    return head + turns + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _from_sharegpt(record: dict, row: int, errors: list) -> list[dict] | None:
    system = _string(record, "system", row, errors, required=False)
    turns = _turns(record["conversations"], "conversations", "from", "value", SHAREGPT_ROLES, row, errors)
    if errors:
        return None
    return ([{"role": "system", "content": system}] if system else []) + turns


def _turns(items, name: str, role_key: str, text_key: str, roles: dict, row: int, errors: list) -> list[dict] | None:
    """Turn a list of turn objects into ``[{"role", "content"}]``, mapping role names through ``roles``."""
    if not isinstance(items, list):
        errors.append(RowError(row, name, text("data.turns_not_array", "must be an array of turns, got {type}",
                                               type=json_type(items))))
        return None
    if not items:
        errors.append(RowError(row, name, text("data.turns_empty",
                                               "is empty; it needs a user turn and an assistant turn")))
        return None
    turns = []
    for i, item in enumerate(items):
        where = f"{name}[{i}]."
        if not isinstance(item, dict):
            errors.append(RowError(row, f"{name}[{i}]", text("data.turn_not_object", "turn is {type}; expected an "
                                                             "object", type=json_type(item))))
            continue
        tool_role = isinstance(item.get(role_key), str) and item[role_key] in TOOL_ROLES
        if tool_role or "tool_calls" in item:
            what = repr(item[role_key]) if tool_role else '"tool_calls"'
            errors.append(RowError(row, f"{name}[{i}]", text(
                "data.tool_call_turn", "tool-call turns are not trained ({what}); the record is left out", what=what)))
            continue
        role = _string(item, role_key, row, errors, required=True, where=where)
        content = _string(item, text_key, row, errors, required=True, where=where)
        if role is not None and role not in roles:
            errors.append(RowError(row, where + role_key, text("data.unknown_role",
                                                               "unknown role {role!r}; use one of {roles}",
                                                               role=role, roles=sorted(roles))))
        elif role is not None and content is not None:
            turns.append({"role": roles[role], "content": content})
    return None if errors else turns


def _check_conversation(conversation: list[dict], row: int, errors: list, max_chars: int) -> None:
    """Checks shared by all formats, on the normalised conversation."""
    roles = [t["role"] for t in conversation]
    if "system" in roles[1:]:
        errors.append(RowError(row, "", text("data.system_not_first", "a system turn may only come first")))
    if "user" not in roles:
        errors.append(RowError(row, "", text("data.no_user_turn", "has no user turn")))
    if roles[-1] != "assistant":
        errors.append(RowError(row, "", text("data.ends_without_answer",
                                             "must end with an assistant turn, ends with {role}", role=roles[-1])))
    for i, turn in enumerate(conversation):
        if turn["role"] != "system" and not turn["content"].strip():
            errors.append(RowError(row, f"turn {i + 1}", text("data.empty_turn", "empty {role} turn",
                                                              role=turn["role"])))
        bad = CONTROL.search(turn["content"])
        if bad:
            errors.append(RowError(row, f"turn {i + 1}", text(
                "data.control_character",
                "{role} text has control character U+{codepoint:04X} at position {position}; remove it",
                role=turn["role"], codepoint=ord(bad.group()), position=bad.start())))
        lone = SURROGATE.search(turn["content"])
        if lone:
            errors.append(RowError(row, f"turn {i + 1}", text(
                "data.lone_surrogate",
                "{role} text has a lone surrogate \\u{codepoint:04x} at position {position} (half of a UTF-16 "
                "pair, not a character); fix the escape", role=turn["role"], codepoint=ord(lone.group()),
                position=lone.start())))
    total = sum(len(t["content"]) for t in conversation)
    if total > max_chars:
        errors.append(RowError(row, "", text("data.too_long",
                                             "is {chars:,} characters, over the {max_chars:,} limit (max_chars)",
                                             chars=total, max_chars=max_chars)))


# Unicode control characters (category Cc) except tab, newline and carriage return.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# Half of a UTF-16 surrogate pair: JSON's "\ud800" escape decodes to it alone, and no tokenizer can encode it.
SURROGATE = re.compile("[\ud800-\udfff]")

# Unfilled template slots: {{name}} / {{ user }} (Jinja, SillyTavern), ${name}, {name} alone is too common in code.
_PLACEHOLDER = re.compile(r"\{\{\s*[\w.\-]{1,40}\s*\}\}|\$\{\w{1,40}\}")


def placeholder_warnings(conversation: list[dict], row: int) -> list[RowError]:
    """Answers that still hold a template slot such as {{name}}: the model would learn to say it literally."""
    out = []
    for i, turn in enumerate(conversation):
        found = _PLACEHOLDER.findall(turn["content"]) if turn["role"] == "assistant" else []
        if found:
            out.append(RowError(row, f"turn {i + 1}", text(
                "data.unfilled_placeholder",
                "answer holds unfilled template placeholder {slots}; fill it in, or the model learns to say it "
                "literally", slots=", ".join(dict.fromkeys(found)))))
    return out


def special_warnings(row: int, conversation: list[dict], tokenizer) -> list[RowError]:
    """Turns whose text holds one of the tokenizer's special-token strings (`<|im_end|>`, `</s>`, ...).

    Training reads such strings as plain characters (they cannot forge turns), but they are almost always a
    mistake in the data: a pasted transcript, a wrongly exported chat log."""
    from trainer_core.data.chat_template import specials_in

    out = []
    for i, turn in enumerate(conversation):
        found = specials_in(tokenizer, turn["content"])
        if found:
            out.append(RowError(row, f"turn {i + 1}", text(
                "data.special_token_in_text",
                "{role} text holds special token {tokens}; it is trained as plain text, not as a turn marker; "
                "remove it unless that is meant", role=turn["role"], tokens=", ".join(found))))
    return out
