"""The Chat page's persona probe sent to the persona evaluation: stored in the run's eval/ folder as a chat-probe
result and shown in the Runs page's evaluation table (pytest tests/app/test_eval_probe.py)."""

from __future__ import annotations

from app import chat_view as cv
from app.i18n import ZH
from pages_helpers import goto, make_run, texts
from trainer_core.common import paths
from trainer_core.evaluation import persona_eval as pe


def _answer(text: str, by: list[str]) -> list[dict]:
    return [{"role": "assistant", "content": text, "by": by, "done": True, "tokens": 4, "tokens_per_s": 10.0}]


def test_a_probe_sent_to_the_evaluation_is_stored_and_shown_on_the_runs_page(app, runs_root):
    run = make_run(runs_root, "done", "completed", final=True)
    goto(app, "pages/chat.py")
    # A completed probe on the run's final model and its base model (as run_probe leaves it; the generation itself
    # is tested in test_app_pages).
    ft, base = ["ft", "done · final"], ["base", str(paths.STARTER_MODEL_DIR)]
    replies = {"ft": ["我是华妃。", "本宫在此。", "滚。", "我是一个AI助手。"], "base": ["不知道"] * 4}
    probe = {"by": {"ft": ft, "base": base}, "done": True, "persona": "你是华妃", "run": str(run),
             "models": {"ft": "final", "base": "base"},
             "paths": {"ft": str(run / "final"), "base": str(paths.STARTER_MODEL_DIR)},
             "rows": [{"prompt": p, "ft": _answer(replies["ft"][i], ft), "base": _answer(replies["base"][i], base)}
                      for i, p in enumerate(cv.PROBES)]}
    key = cv.conversation_key("run", "done", "final", "你是华妃")
    app.session_state["chat.conversations"] = {key: {"ft": [], "base": [], "probe": probe}}
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    app.button(key="chat.probe_send").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert ZH["chat.probe_sent"].format(labels="chat-probe-final, chat-probe-base") in texts(app, "success")
    stored = pe.read_results(run)
    assert list(stored) == ["chat-probe-base", "chat-probe-final"]
    final = stored["chat-probe-final"]
    assert final["source"] == "chat_probe" and final["n_probes"] == 4 and final["n_records"] == 0
    assert final["replies"]["probes"] == replies["ft"] and final["prompts"] == cv.PROBES
    # Hand-counted: one of four names 华妃, one claims to be an AI assistant.
    assert final["metrics"] == {"identity_in_persona": 0.25, "breaks_character": 0.25}
    assert stored["chat-probe-base"]["metrics"] == {"identity_in_persona": 0.0, "breaks_character": 0.0}
    # The Runs page's evaluation table shows them.
    goto(app, "pages/runs.py")
    assert not app.exception, [e.value for e in app.exception]
    table = next(d.value for d in app.dataframe if "rouge_l" in d.value.columns)
    rows = table.set_index("model")
    assert list(rows.index) == ["chat-probe-base", "chat-probe-final"]
    assert rows.loc["chat-probe-final", "identity_in_persona"] == "0.250"
    assert rows.loc["chat-probe-final", "rouge_l"] == "—" and rows.loc["chat-probe-final", "probes"] == 4
