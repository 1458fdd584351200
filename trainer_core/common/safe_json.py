"""JSON from users, parsed without surprises: a nesting limit, no NaN/Infinity, no integers Python will not
convert, duplicate keys reported.

Python's parser recurses once per nesting level, so a file of 100,000 "[" ends in RecursionError deep inside it;
we measure the depth first, with C-speed string operations, and refuse it by name. NaN and Infinity are not JSON
(RFC 8259) although Python accepts them. A repeated key silently keeps its last value in Python, so the parse
records every repeated key for the caller to warn about.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import numpy as np

from trainer_core.common.errors import Text, text

MAX_DEPTH = 64
"""Deepest nesting accepted. A dialogue record needs 4 levels (record, history, pair, string); DeepSpeed JSON 3."""

# A JSON string, escapes included; "unrolled" so the regex engine does not backtrack per character.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_OPEN = (ord("["), ord("{"))


class JsonProblem(ValueError):
    """Why a text is not acceptable JSON, as a coded message without the file name (callers add where).
    ``str()`` is the English; ``.text`` the ``Text`` the dashboard translates."""

    def __init__(self, message: Text):
        super().__init__(message)
        self.text = message


def nesting_depth(doc: str) -> int:
    """The deepest level of arrays/objects in a JSON text (brackets inside strings do not count)."""
    if doc.count("[") + doc.count("{") == 0:
        return 0
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", doc))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets.encode("ascii"), dtype=np.uint8)
    steps = np.where((codes == _OPEN[0]) | (codes == _OPEN[1]), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max())


def no_constant(name: str):
    """``parse_constant`` hook: NaN and Infinity are refused by name."""
    raise JsonProblem(text("data.json_constant", "{constant} is not valid JSON (use null or a number)",
                           constant=name))


def parse_int(digits: str) -> int:
    """``parse_int`` hook: Python refuses to convert an integer of more than 4,300 digits (a guard against
    quadratic conversion time, sys.get_int_max_str_digits) with a ValueError; it is refused here by name."""
    try:
        return int(digits)
    except ValueError:
        raise JsonProblem(text("data.json_long_integer", "a number of {digits:,} digits, more than the {limit:,} "
                               "allowed; write it as a string", digits=len(digits.lstrip("-")),
                               limit=sys.get_int_max_str_digits())) from None


def loads(doc: str, *, max_depth: int = MAX_DEPTH) -> tuple[Any, list[str]]:
    """Parse ``doc``; return (value, repeated keys in the order met). Raises JsonProblem for depth and NaN, and
    json.JSONDecodeError (with its line and column) for malformed text, which callers word for their input."""
    # Counting brackets is cheap and bounds the depth from above, so most texts skip the exact measurement.
    if doc.count("[") + doc.count("{") > max_depth:
        depth = nesting_depth(doc)
        if depth > max_depth:
            raise JsonProblem(text("data.json_too_deep", "nested {depth} levels deep, more than the {limit} "
                                   "allowed; flatten it", depth=depth, limit=max_depth))
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in items:
            if key in out:
                repeated.append(key)
            out[key] = value
        return out

    try:
        value = json.loads(doc, object_pairs_hook=pairs, parse_constant=no_constant, parse_int=parse_int)
    except RecursionError:  # only reachable with a limit above Python's stack; kept so it can never escape
        raise JsonProblem(text("data.json_recursion", "nested too deeply for the parser; keep it under {limit} "
                               "levels", limit=max_depth)) from None
    return value, repeated
