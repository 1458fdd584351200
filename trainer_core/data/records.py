"""Read the records of a dataset file one at a time, so no step holds more than one record's parsed form.

``.jsonl`` is read line by line from the open file; a ``.json`` array is decoded element by element from its text.
Each item is ``(row, record, repeated_keys, problem)``: ``row`` is the 1-based line (.jsonl) or position (.json),
``problem`` a coded ``Text`` when that row is not usable JSON (then ``record`` is None). Problems with the file as
a whole (encoding, a top level that is not an array) raise UserError.
"""

from __future__ import annotations

import json
from typing import IO, Iterator

from trainer_core.common import safe_json
from trainer_core.common.errors import Text, UserError, text

Item = tuple[int, object, list[str], Text | None]


def iter_jsonl(stream: IO[bytes], name: str) -> Iterator[Item]:
    """Records of a .jsonl file; blank lines are skipped (their numbers still count)."""
    offset = 0
    # Only "\n" ends a record: JSON strings may hold U+2028 and other characters that str.splitlines() breaks on.
    for lineno, raw in enumerate(stream, start=1):
        if lineno == 1:
            if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise UserError("data.utf16", "{name}: file is UTF-16; save it as UTF-8", name=name)
            if raw.startswith(b"\xef\xbb\xbf"):
                raw, offset = raw[3:], 3
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise not_utf8(name, raw[e.start], offset + e.start, lineno) from None
        offset += len(raw)
        line = line.removesuffix("\n")
        if not line.strip():
            continue
        try:
            record, repeated = safe_json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, None, [], text("data.invalid_json_line", "invalid JSON at column {column}: {reason}",
                                         column=e.colno, reason=json_reason(e.msg))
        except safe_json.JsonProblem as e:
            yield lineno, None, [], e.text
        else:
            yield lineno, record, repeated, None


def iter_json_array(text: str, name: str, cursor: list[int] | None = None) -> Iterator[Item]:
    """Records of a .json file holding one top-level array, decoded one element at a time. ``cursor[0]`` follows
    the character position reached, for progress."""
    depth = safe_json.nesting_depth(text)
    if depth > safe_json.MAX_DEPTH:
        raise UserError("data.nested_too_deep", "{name}: nested {depth} levels deep, more than the {limit} a "
                        "dataset may use; records are flat objects", name=name, depth=depth, limit=safe_json.MAX_DEPTH)
    start = _skip_ws(text, 0)
    if start >= len(text) or text[start] != "[":
        _refuse_top_level(text, name)
    repeated: list[str] = []

    def pairs(items):
        out = {}
        for key, value in items:
            if key in out:
                repeated.append(key)
            out[key] = value
        return out

    decoder = json.JSONDecoder(object_pairs_hook=pairs, parse_constant=_constant, parse_int=safe_json.parse_int)
    pos = _skip_ws(text, start + 1)
    if text.startswith("]", pos):
        _expect_end(text, pos + 1, name)
        return
    row = 0
    while True:
        row += 1
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise malformed(name, e.lineno, e.colno, e.msg) from None
        except safe_json.JsonProblem as e:
            yield row, None, [], e.text
            pos = _skip_value(text, pos, name)
        else:
            yield row, record, repeated[:], None
        repeated.clear()
        pos = _skip_ws(text, pos)
        if cursor is not None:
            cursor[0] = pos
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
        elif text.startswith("]", pos):
            _expect_end(text, pos + 1, name)
            return
        else:
            line, col = _line_col(text, pos)
            raise malformed(name, line, col, "Expecting ',' delimiter")


def malformed(name: str, line: int, column: int, reason: str) -> UserError:
    """A file that is not JSON from this point on; ``reason`` is the parser's phrase (json.JSONDecodeError.msg)."""
    return UserError("data.malformed_json", "{name}: malformed JSON at line {line}, column {column}: {reason}",
                     name=name, line=line, column=column, reason=json_reason(reason))


def json_reason(msg: str) -> Text | str:
    """Python's JSON parser's phrase as a coded text, so the dashboard can say it in Chinese (unknown ones stay)."""
    return _JSON_REASONS.get(msg, msg)


_JSON_REASONS = {
    "Expecting value": text("data.json_expecting_value", "Expecting value"),
    "Expecting ',' delimiter": text("data.json_expecting_comma", "Expecting ',' delimiter"),
    "Expecting ':' delimiter": text("data.json_expecting_colon", "Expecting ':' delimiter"),
    "Expecting property name enclosed in double quotes": text(
        "data.json_expecting_name", "Expecting property name enclosed in double quotes"),
    "Unterminated string starting at": text("data.json_unterminated", "Unterminated string starting at"),
    "Invalid control character at": text("data.json_control_character", "Invalid control character at"),
    "Invalid \\escape": text("data.json_bad_escape", "Invalid \\escape"),
    "Extra data": text("data.json_extra_data", "Extra data"),
}


def not_utf8(name: str, byte: int, offset: int, line: int) -> UserError:
    return UserError("data.not_utf8", "{name}: not valid UTF-8 (byte 0x{byte:02x} at offset {offset}, line {line}); "
                     "save the file as UTF-8", name=name, byte=byte, offset=offset, line=line)


_constant = safe_json.no_constant


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _skip_value(text: str, pos: int, name: str) -> int:
    """Past a record that holds NaN/Infinity or a too long integer: decode it again without the checks (the
    integers left as text), to find where it ends."""
    try:
        return json.JSONDecoder(parse_int=str).raw_decode(text, pos)[1]
    except json.JSONDecodeError as e:
        raise malformed(name, e.lineno, e.colno, e.msg) from None


def _expect_end(text: str, pos: int, name: str) -> None:
    pos = _skip_ws(text, pos)
    if pos < len(text):
        line, col = _line_col(text, pos)
        raise malformed(name, line, col, "Extra data")


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _refuse_top_level(text: str, name: str) -> None:
    try:
        value, _ = safe_json.loads(text)
    except json.JSONDecodeError as e:
        raise malformed(name, e.lineno, e.colno, e.msg) from None
    except safe_json.JsonProblem as e:
        raise UserError("data.file_problem", "{name}: {problem}", name=name, problem=e.text) from None
    raise UserError("data.top_level_not_array", '{name}: top level is {type}; expected an array of records '
                    '[{{"instruction": ..., "output": ...}}, ...] (or a .jsonl file with one record per line)',
                    name=name, type=json_type(value))


def json_type(value) -> Text:
    """The JSON kind of a value, as words for a message ("an object", "a string", ...)."""
    if isinstance(value, dict):
        return text("data.type_object", "an object")
    if isinstance(value, list):
        return text("data.type_array", "an array")
    if isinstance(value, str):
        return text("data.type_string", "a string")
    if isinstance(value, bool):
        return text("data.type_boolean", "a boolean")
    if value is None:
        return text("data.type_null", "null")
    return text("data.type_number", "a number")
