# .venv/bin/python -m pytest tests/test_app_second_pass.py -q
"""Issue 18, the dashboard's second pass: each defect a new user tripped over, through Streamlit's AppTest.

The fixtures and run-directory helpers are tests/test_app_pages.py's, so runs on disk look exactly as there.
Chat tests that generate load the real starter model (sampling, 16 tokens); they are marked slow.
"""

from __future__ import annotations

import json

import pytest

from app import chat_view as cv
from app.i18n import EN, ZH
from test_app_pages import app, goto, make_run, texts, uploads, warm_server  # noqa: F401 (fixtures)
from app.data_view import shown_path
from trainer_core import paths

STARTER = shown_path(paths.STARTER_MODEL_DIR)  # as the page shows it: relative to the project where it lies inside


def _chat_messages(at) -> list[tuple[str, str]]:
    """(role, text) of every chat message on the page, the text as plain-text elements."""
    return [(m.name, "".join(e.value for e in m.text)) for m in at.chat_message]


def _captions(at) -> list[str]:
    return [c.value for m in at.chat_message for c in m.caption]


# ---------------------------------------------------------------------------------------------------- chat


@pytest.mark.slow
def test_chat_history_belongs_to_its_model_and_each_reply_says_who_wrote_it(app, runs_root):
    make_run(runs_root, "a", "completed", final=True)
    make_run(runs_root, "b", "completed", final=True)
    goto(app, "pages/chat.py")
    app.selectbox(key="p.chat.run").set_value("a").run()
    app.slider(key="p.chat.max_new").set_value(16)
    app.chat_input(key="chat.input").set_value("my_var_name 是*谁*？").run()
    assert not app.exception, [e.value for e in app.exception]
    # Plain text, not Markdown: the underscores and asterisks stay as typed.
    messages = _chat_messages(app)
    assert messages[0] == ("user", "my_var_name 是*谁*？") and messages[1][0] == "assistant"
    assert not app.chat_message[0].markdown
    assert ZH["chat.side.ft"].format(name="a · final") in _captions(app)
    # Compare mode: the base model answers too, labelled as the base.
    app.toggle(key="p.chat.compare").set_value(True)
    app.chat_input(key="chat.input").set_value("皇上驾到！").run()
    assert not app.exception
    conv = app.session_state["chat.conversations"][cv.conversation_key("run", "a", "final", "你是华妃")]
    base_reply = [m for m in conv["base"] if m["role"] == "assistant"]
    assert len(base_reply) == 1 and base_reply[0]["by"] == ["base", STARTER]
    shown = _chat_messages(app)
    assert ZH["chat.side.base"].format(name=STARTER) in _captions(app)
    # Another run: its own (empty) history, nothing relabelled.
    app.selectbox(key="p.chat.run").set_value("b").run()
    assert not app.chat_message
    # Back on run a, and after a visit to another page: the same replies, none asked for again.
    app.selectbox(key="p.chat.run").set_value("a").run()
    goto(app, "pages/monitor.py")
    goto(app, "pages/chat.py")
    assert _chat_messages(app) == shown
    # The probe's results belong to run a: a plain model folder shows none, and its replies are not "fine-tuned".
    app.button(key="chat.probe_btn").click().run()
    assert not app.exception and ZH["chat.probe_results"] in [h.value for h in app.subheader]
    app.radio(key="p.chat.source").set_value("model").run()
    assert not app.chat_message and ZH["chat.probe_results"] not in [h.value for h in app.subheader]
    app.chat_input(key="chat.input").set_value("你好").run()
    assert ZH["chat.side.model"].format(name=STARTER) in _captions(app)
    assert not any(c.startswith(ZH["chat.side.ft"].split("{")[0]) for c in _captions(app))
    app.radio(key="p.chat.source").set_value("run").run()
    assert _chat_messages(app) == shown and ZH["chat.probe_results"] in [h.value for h in app.subheader]


def test_a_plain_model_folder_is_not_labelled_fine_tuned(app, runs_root):
    goto(app, "pages/chat.py")
    app.radio(key="p.chat.source").set_value("model").run()
    headers = [m.value for m in app.markdown]
    assert f"**{ZH['chat.side.model'].format(name=STARTER)}**" in headers
    assert not any(ZH["chat.side.ft"].split("{")[0] in h for h in headers)
    app.radio(key="lang").set_value("en").run()
    assert f"**{EN['chat.side.model'].format(name=STARTER)}**" in [m.value for m in app.markdown]


def test_a_reply_cut_short_by_leaving_the_page_is_kept_not_asked_again(app, runs_root):
    """A page left mid-reply stops the script: what was streamed so far is in the history (unfinished), and an
    unanswered turn stays unanswered. Coming back must show that, not ask the model again (a different answer)."""
    make_run(runs_root, "a", "completed", final=True)
    goto(app, "pages/chat.py")
    app.toggle(key="p.chat.compare").set_value(True).run()
    key = cv.conversation_key("run", "a", "final", "你是华妃")
    ft = [{"role": "user", "content": "你是谁？"},
          {"role": "assistant", "content": "臣妾是", "by": ["ft", "a · final"], "done": False}]
    app.session_state["chat.conversations"] = {key: {"ft": ft, "base": [{"role": "user", "content": "你是谁？"}],
                                                     "probe": None}}
    goto(app, "pages/monitor.py")
    goto(app, "pages/chat.py")
    assert _chat_messages(app) == [("user", "你是谁？"), ("assistant", "臣妾是"), ("user", "你是谁？")]
    assert ZH["chat.side.ft"].format(name="a · final") + " · " + ZH["chat.interrupted"] in _captions(app)
    conv = app.session_state["chat.conversations"][key]
    assert len(conv["ft"]) == 2 and len(conv["base"]) == 1  # nothing generated


def test_chat_with_it_opens_that_run(app, runs_root):
    make_run(runs_root, "older", "completed", final=True)
    goto(app, "pages/chat.py")
    app.selectbox(key="p.chat.run").set_value("older").run()
    make_run(runs_root, "newer", "completed", final=True)
    goto(app, "pages/monitor.py")
    app.selectbox(key="mon.run").set_value("newer").run()
    app.button(key="mon.chat_now").click().run()
    assert not app.exception
    assert app.title[0].value == ZH["chat.title"]
    assert app.radio(key="p.chat.source").value == "run"
    assert app.selectbox(key="p.chat.run").value == "newer"
    assert app.selectbox(key="p.chat.target").value == "final"
