"""Every message a user can read about their input has a stable code and Chinese text (issue 18, item 4).

Messages are written as `UserError(code, template, **params)` or `text(code, template, **params)` (for data-row
problems, lints and notes); the dashboard renders them through `app/messages_zh.py`. This test reads the source:
a message written as a plain or f-string sentence, a code without Chinese, or a Chinese text that names a
placeholder the English does not fill, fails here.
"""

from __future__ import annotations

import ast
import string

import pytest

from app.messages_zh import MESSAGES_ZH
from trainer_core.common.errors import CODE, Text, UserError
from trainer_core.common.paths import PROJECT_ROOT

SOURCES = sorted(p for d in ("trainer_core", "app", "pages") for p in (PROJECT_ROOT / d).rglob("*.py")
                 if "fixtures" not in p.parts)
# Calls whose argument at this index is a user-facing message (RowError(row, field, message), Lint(level, code, message)).
MESSAGE_ARG = {"RowError": 2, "Lint": 2}


def _name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _is_sentence(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def scan():
    """(coded messages as (file, line, code, template, param names or None), plain sentences as (file, line))."""
    coded, plain = [], []
    for path in SOURCES:
        rel = path.relative_to(PROJECT_ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if not isinstance(node, ast.Call):
                continue
            name, args = _name(node), node.args
            if name in ("UserError", "text", "Text") and args:
                first = args[0]
                if (len(args) >= 2 and isinstance(first, ast.Constant) and isinstance(first.value, str)
                        and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)):
                    names = None if any(k.arg is None for k in node.keywords) else {k.arg for k in node.keywords}
                    coded.append((rel, node.lineno, first.value, args[1].value, names))
                elif _is_sentence(first):
                    plain.append((rel, node.lineno))
            elif name in MESSAGE_ARG and len(args) > MESSAGE_ARG[name] and _is_sentence(args[MESSAGE_ARG[name]]):
                plain.append((rel, node.lineno))
    return coded, plain


CODED, PLAIN = scan()


def _fields(template: str) -> set[str]:
    return {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def test_no_plain_sentences():
    offenders = [f"{f}:{line}" for f, line in PLAIN]
    assert not offenders, "write these as UserError(code, template, **params) or text(...):\n" + "\n".join(offenders)



@pytest.mark.parametrize("where,code,template,names", [(f"{f}:{n}", c, t, k) for f, n, c, t, k in CODED])
def test_coded_message(where, code, template, names):
    assert CODE.match(code), f"{where}: code {code!r} must look like area.name"
    assert code in MESSAGES_ZH, f"{where}: {code!r} has no Chinese in app/messages_zh.py"
    if names is not None:
        assert _fields(template) <= names, f"{where}: {code!r} template needs {_fields(template) - names}"
    assert _fields(MESSAGES_ZH[code]) <= _fields(template), (
        f"{where}: Chinese for {code!r} uses placeholders the English does not fill")


def test_one_template_per_code():
    seen: dict[str, tuple[str, str]] = {}
    for f, n, code, template, _ in CODED:
        if code in seen and seen[code][1] != template:
            pytest.fail(f"{f}:{n}: {code!r} means two things (also {seen[code][0]})")
        seen.setdefault(code, (f"{f}:{n}", template))


def test_every_chinese_entry_is_used():
    unused = set(MESSAGES_ZH) - {c for _, _, c, _, _ in CODED}
    assert not unused, f"app/messages_zh.py has entries no code writes: {sorted(unused)}"


def test_rendering_in_both_languages():
    inner = Text("data.demo_inner", "row {row} is empty", {"row": 3})
    outer = UserError("data.demo_outer", "{path}: {problem}", path="a.json", problem=inner)
    zh = {"data.demo_inner": "第 {row} 行为空", "data.demo_outer": "{path}：{problem}"}
    assert str(outer) == "a.json: row 3 is empty"
    assert outer.text.render(zh.get) == "a.json：第 3 行为空"
    assert outer.code == "data.demo_outer"
    with pytest.raises(ValueError, match="area.name"):
        Text("Not a code", "x")
