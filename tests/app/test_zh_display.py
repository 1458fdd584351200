"""Issue 31, item 9: what the Chinese UI shows besides its own labels (field names, state and phase)."""

from __future__ import annotations

import json

from app import data_view
from app.i18n import phase_text
from trainer_core.data.dataset import load_dataset_bytes
from trainer_core.runs import protocol


def test_an_alpaca_records_turn_is_named_in_chinese():
    """Validation names a converted record's turns "turn 2"; the warnings table said so in the Chinese UI."""
    data = '{"instruction": "你是谁？", "output": "臣妾\\u0007"}\n{"instruction": "问", "output": "答"}\n'.encode()
    report = load_dataset_bytes(data, "a.jsonl")
    fields = list(data_view.errors_frame(report, "errors")["field"]) + \
        list(data_view.errors_frame(report, "warnings")["field"])
    assert fields and all("turn" not in f for f in fields), fields
    assert "第 2 轮" in fields, fields
    assert data_view.field_label("messages[0]") == "messages[0]"  # a real field name stays as it is


def test_a_training_run_does_not_say_training_twice():
    """"训练中 · 训练": the phase repeated the state; other phases (and progress inside one) still show."""
    running = protocol.Status(state=protocol.RUNNING, phase=protocol.PHASE_TRAINING)
    assert phase_text(running) == ""
    evaluating = protocol.Status(state=protocol.RUNNING, phase=protocol.PHASE_EVALUATING, phase_done=3, phase_total=9)
    assert phase_text(evaluating) == "验证 3/9"
    assert phase_text(protocol.Status(state=protocol.STOPPING, phase=protocol.PHASE_TRAINING)) == "训练"


def test_runs_table_columns_fit_their_headers(app, runs_root):
    """The Runs table sized columns by their values, so headers (最终损失, 运行时长 with its help icon) were cut."""
    from pages_helpers import goto, make_run

    from app import runs_view

    make_run(runs_root, "r", "completed")
    goto(app, "pages/runs.py")
    table = app.dataframe[0]
    columns = json.loads(table.proto.columns)  # the column config Streamlit sends to the grid
    for name, header in (("final loss", "最终损失"), ("duration", "运行时长"), ("steps", "步数")):
        width = columns[name]["width"]
        assert isinstance(width, int) and width >= runs_view.text_width(header) + 28, (name, width)
