"""JSON from users, parsed without surprises: a nesting limit, no NaN/Infinity, duplicate keys reported.

Python's parser recurses once per nesting level, so a file of 100,000 "[" ends in RecursionError deep inside it;
we measure the depth first, with C-speed string operations, and refuse it by name. NaN and Infinity are not JSON
(RFC 8259) although Python accepts them. A repeated key silently keeps its last value in Python, so the parse
records every repeated key for the caller to warn about.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 64
"""Deepest nesting accepted. A dialogue record needs 4 levels (record, history, pair, string); DeepSpeed JSON 3."""

# A JSON string, escapes included; "unrolled" so the regex engine does not backtrack per character.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_OPEN = (ord("["), ord("{"))


class JsonProblem(ValueError):
    """Why a text is not acceptable JSON, as a message without the file name (callers add where)."""


def nesting_depth(text: str) -> int:
    """The deepest level of arrays/objects in a JSON text (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") == 0:
        return 0
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    steps = np.where((codes == _OPEN[0]) | (codes == _OPEN[1]), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max())


def _no_constant(name: str):
    raise JsonProblem(f"{name} is not valid JSON (use null or a number)")


def loads(text: str, *, max_depth: int = MAX_DEPTH) -> tuple[Any, list[str]]:
    """Parse ``text``; return (value, repeated keys in the order met). Raises JsonProblem for depth and NaN, and
    json.JSONDecodeError (with its line and column) for malformed text, which callers word for their input."""
    # Counting brackets is cheap and bounds the depth from above, so most texts skip the exact measurement.
    if text.count("[") + text.count("{") > max_depth:
        depth = nesting_depth(text)
        if depth > max_depth:
            raise JsonProblem(f"nested {depth} levels deep, more than the {max_depth} allowed; flatten it")
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in items:
            if key in out:
                repeated.append(key)
            out[key] = value
        return out

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=_no_constant)
    except RecursionError:  # only reachable with a limit above Python's stack; kept so it can never escape
        raise JsonProblem(f"nested too deeply for the parser; keep it under {max_depth} levels") from None
    return value, repeated
