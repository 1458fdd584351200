"""The Train and Data pages, issue 31: every problem at once, nothing silently reset, refusals before the click.

Run: .venv/bin/python -m pytest tests/app/test_train_form_third_pass.py -q
"""

from __future__ import annotations

from pages_helpers import goto, texts

FIVE = {"train.learning_rate": "5", "train.epochs": -1.0, "data.max_length": 1, "train.seed": -3,
        "train.micro_batch_size": 0}


def set_five_invalid(app) -> None:
    for field, value in FIVE.items():
        k = f"p.f.{field}"
        (app.text_input(key=k) if isinstance(value, str) else app.number_input(key=k)).set_value(value)
    app.run()


def test_five_invalid_fields_are_reported_at_once_each_under_its_field(app, runs_root):
    goto(app, "pages/train.py")
    set_five_invalid(app)
    assert not app.exception
    errors = texts(app, "error")
    for field in FIVE:  # one box under the field itself (its message starts with the field) ...
        assert sum(e.startswith(field) for e in errors) == 1, (field, errors)
    summary = [e for e in errors if not e.split(" ")[0] in FIVE]  # ... and all five in the plan's summary
    assert summary and all(field in summary[0] for field in FIVE), errors
    assert app.button(key="train.launch").disabled is True
    assert list(runs_root.iterdir()) == []


def test_a_busy_device_is_in_the_plan_and_disables_launch_before_the_click(app, runs_root):
    """Another run holds this machine's device (a real device lock, as a running run holds it): the page says so
    in the plan, by run, with the button disabled, and gives no GPU advice on this machine without a GPU."""
    import os

    from helpers import CPU_LOCK
    from trainer_core.runs import device_locks

    fds = device_locks.acquire(runs_root / "other-run", [CPU_LOCK])
    try:
        goto(app, "pages/train.py")
    finally:
        for fd in fds:
            os.close(fd)
    assert any("other-run" in e for e in texts(app, "error")), texts(app, "error")
    assert app.button(key="train.launch").disabled is True
    assert any("other-run" in c for c in texts(app, "caption")), "the reason sits beside the disabled button"
    shown = " ".join(texts(app, "error") + texts(app, "caption") + texts(app, "warning"))
    assert "placement.gpus" not in shown and "GPU" not in " ".join(e for e in texts(app, "error") if "other-run" in e).replace("没有 GPU", "")
    assert list(runs_root.iterdir()) == []


def test_an_empty_persona_is_warned_at_the_field_and_in_the_plan(app):
    from app.i18n import LABELS
    from app.messages_zh import MESSAGES_ZH

    goto(app, "pages/train.py")
    app.text_area(key="p.f.data.persona").set_value("").run()
    assert not app.exception
    warnings = texts(app, "warning")
    assert LABELS["zh"]["train.persona_empty"] in warnings
    assert MESSAGES_ZH["runs.persona_empty"] in warnings  # the plan's lint
    assert any(LABELS["zh"]["train.uses_no_persona"] in m for m in texts(app, "markdown"))


def test_the_data_file_and_persona_a_launch_uses_are_shown_beside_the_button(app):
    goto(app, "pages/train.py")
    app.text_area(key="p.f.data.persona").set_value("你是一只猫").run()
    uses = [m for m in texts(app, "markdown") if "你是一只猫" in m]
    assert uses and "sample_zhenhuan.jsonl" in uses[0]


def restarted(draft_id: str | None):
    """A new server session for the same tab: Streamlit's frontend reconnects after a restart and reruns the page
    with the tab's URL, so only what the URL holds (the draft id) comes with it."""
    from streamlit.testing.v1 import AppTest

    from pages_helpers import APP

    at = AppTest.from_file(APP, default_timeout=120)
    if draft_id is not None:
        at.query_params["draft"] = draft_id
    at.run()
    assert not at.exception
    return goto(at, "pages/train.py")


def test_a_restarted_server_gives_the_tab_its_data_and_persona_back(app, uploads):
    from app.i18n import LABELS

    data = uploads / "mine.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text('{"instruction": "你好", "output": "臣妾在。"}\n' * 4, encoding="utf-8")
    goto(app, "pages/train.py")
    app.text_input(key="p.f.data.path").set_value(str(data))
    app.text_area(key="p.f.data.persona").set_value("你是华妃").run()
    draft_id = app.query_params["draft"]
    if isinstance(draft_id, list):
        draft_id = draft_id[0]

    again = restarted(draft_id)
    assert again.text_input(key="p.f.data.path").value == str(data)
    assert again.text_area(key="p.f.data.persona").value == "你是华妃"
    assert LABELS["zh"]["train.draft_restored"] in texts(again, "info")
    assert any("你是华妃" in m and "mine.jsonl" in m for m in texts(again, "markdown")), "shown beside Launch"


def test_a_draft_that_cannot_be_restored_is_said_before_any_launch(app):
    from app.i18n import LABELS

    again = restarted("0" * 32)  # the tab's draft is gone (cleaned up, another cache folder)
    lost = LABELS["zh"]["train.draft_lost"].split("（")[0]
    assert any(w.startswith(lost) for w in texts(again, "warning")), texts(again, "warning")
    assert any(c.startswith(lost) for c in texts(again, "caption")), "said again beside the launch button"


def test_a_subset_is_not_called_selected_once_the_train_form_uses_another_file(app, uploads):
    from app.i18n import LABELS

    records = "".join(f'{{"instruction": "问{i}", "output": "答{i}"}}\n' for i in range(6))
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "six.jsonl").write_text(records, encoding="utf-8")
    app.radio(key="p.data.source").set_value("path").run()
    app.text_input(key="p.data.server_path").set_value(str(uploads / "six.jsonl")).run()
    app.radio(key="data.cut.mode").set_value("first")
    app.number_input(key="data.cut.n").set_value(3)
    app.button(key="data.cut.go").click().run()
    done = LABELS["zh"]["data.cut.done"].split("`")[0]
    assert any(s.startswith(done) for s in texts(app, "success"))
    goto(app, "pages/train.py")
    app.text_input(key="p.f.data.path").set_value("data/sample_zhenhuan.jsonl").run()
    goto(app, "pages/data.py")
    assert not any(s.startswith(done) for s in texts(app, "success")), "a stale 'selected' box"
    assert app.button(key="data.use") is not None  # the page offers to use the subset instead
    assert any(s.startswith(LABELS["zh"]["data.cut.written"].split("`")[0]) for s in texts(app, "success"))
