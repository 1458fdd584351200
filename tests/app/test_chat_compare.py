# .venv/bin/python -m pytest tests/app/test_chat_compare.py -q
"""Compare mode on the Chat page: each compared reply is drawn beside its own question (issue 31, item 8)."""

from __future__ import annotations

from app import chat_view as cv
from pages_helpers import goto, make_run


def rows(at) -> list[list[list[tuple[str, str]]]]:
    """The page's rows of columns that hold chat messages: per row, per column, the (role, text) of each message."""
    out = []

    def walk(node) -> None:
        children = list(getattr(node, "children", {}).values())
        if getattr(node, "type", None) == "flex_container" and children \
                and all(getattr(c, "type", None) == "column" for c in children):
            cells = [[(m.name, "".join(e.value for e in m.text)) for m in c.chat_message] for c in children]
            if any(cells):
                out.append(cells)
            return
        for child in children:
            walk(child)

    walk(at.main)
    return out


def test_a_compared_reply_sits_beside_its_own_question(app, runs_root):
    """Compare switched on at the second question: the base model's question and reply are drawn in the row of
    that question, not beside the first one (which the base never saw)."""
    make_run(runs_root, "a", "completed", final=True)
    goto(app, "pages/chat.py")
    app.toggle(key="p.chat.compare").set_value(True).run()
    ft, base = [], []
    conv = {"ft": ft, "base": base, "probe": None}
    cv.add_prompt(conv, ["ft"], "第一问")
    ft.append({"role": "assistant", "content": "答一", "by": ["ft", "a · final"], "done": True})
    cv.add_prompt(conv, ["ft", "base"], "第二问")
    ft.append({"role": "assistant", "content": "答二", "by": ["ft", "a · final"], "done": True})
    base.append({"role": "assistant", "content": "基座答二", "by": ["base", "starter"], "done": True})
    app.session_state["chat.conversations"] = {cv.conversation_key("run", "a", "final", "你是华妃"): conv}
    goto(app, "pages/monitor.py")
    goto(app, "pages/chat.py")
    assert rows(app) == [
        [[("user", "第一问"), ("assistant", "答一")], []],
        [[("user", "第二问"), ("assistant", "答二")], [("user", "第二问"), ("assistant", "基座答二")]],
    ]


def test_turns_written_before_they_were_numbered_align_from_the_newest():
    ft = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
          {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    base = [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "b2"}]
    assert cv.turn_rows({"ft": ft, "base": base}) == [{"ft": ft[:2]}, {"ft": ft[2:], "base": base}]
