"""The Train and Data pages, issue 31: every problem at once, nothing silently reset, refusals before the click.

Run: .venv/bin/python -m pytest tests/app/test_train_form_third_pass.py -q
"""

from __future__ import annotations

from tests.pages_helpers import goto, texts

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
