"""Read the records of a dataset file one at a time, so no step holds more than one record's parsed form.

``.jsonl`` is read line by line from the open file; a ``.json`` array is decoded element by element from its text.
Each item is ``(row, record, repeated_keys, problem)``: ``row`` is the 1-based line (.jsonl) or position (.json),
``problem`` a message when that row is not usable JSON (then ``record`` is None). Problems with the file as a
whole (encoding, a top level that is not an array) raise UserError.
"""

from __future__ import annotations

import json
from typing import IO, Iterator

from trainer_core.data import safe_json
from trainer_core.errors import UserError

Item = tuple[int, object, list[str], str | None]


def iter_jsonl(stream: IO[bytes], name: str) -> Iterator[Item]:
    """Records of a .jsonl file; blank lines are skipped (their numbers still count)."""
    offset = 0
    # Only "\n" ends a record: JSON strings may hold U+2028 and other characters that str.splitlines() breaks on.
    for lineno, raw in enumerate(stream, start=1):
        if lineno == 1:
            if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise UserError(f"{name}: file is UTF-16; save it as UTF-8")
            if raw.startswith(b"\xef\xbb\xbf"):
                raw, offset = raw[3:], 3
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{name}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {offset + e.start}, line {lineno}); "
                "save the file as UTF-8"
            ) from None
        offset += len(raw)
        line = line.removesuffix("\n")
        if not line.strip():
            continue
        try:
            record, repeated = safe_json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, None, [], f"invalid JSON at column {e.colno}: {e.msg}"
        except safe_json.JsonProblem as e:
            yield lineno, None, [], str(e)
        else:
            yield lineno, record, repeated, None


def iter_json_array(text: str, name: str, cursor: list[int] | None = None) -> Iterator[Item]:
    """Records of a .json file holding one top-level array, decoded one element at a time. ``cursor[0]`` follows
    the character position reached, for progress."""
    depth = safe_json.nesting_depth(text)
    if depth > safe_json.MAX_DEPTH:
        raise UserError(f"{name}: nested {depth} levels deep, more than the {safe_json.MAX_DEPTH} a dataset may "
                        "use; records are flat objects")
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

    decoder = json.JSONDecoder(object_pairs_hook=pairs, parse_constant=_constant)
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
            raise UserError(f"{name}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        except safe_json.JsonProblem as e:
            yield row, None, [], str(e)
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
            raise UserError(f"{name}: malformed JSON at line {line}, column {col}: Expecting ',' delimiter")


def _constant(name: str):
    raise safe_json.JsonProblem(f"{name} is not valid JSON (use null or a number)")


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _skip_value(text: str, pos: int, name: str) -> int:
    """Past a record that holds NaN/Infinity: decode it again without the check, to find where it ends."""
    try:
        return json.JSONDecoder().raw_decode(text, pos)[1]
    except json.JSONDecodeError as e:
        raise UserError(f"{name}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _expect_end(text: str, pos: int, name: str) -> None:
    pos = _skip_ws(text, pos)
    if pos < len(text):
        line, col = _line_col(text, pos)
        raise UserError(f"{name}: malformed JSON at line {line}, column {col}: Extra data")


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _refuse_top_level(text: str, name: str) -> None:
    try:
        value, _ = safe_json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{name}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except safe_json.JsonProblem as e:
        raise UserError(f"{name}: {e}") from None
    raise UserError(
        f"{name}: top level is {json_type(value)}; expected an array of records "
        '[{"instruction": ..., "output": ...}, ...] (or a .jsonl file with one record per line)'
    )


def json_type(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
