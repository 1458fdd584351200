"""The Runs page and the evaluation eval.persona_at_end started after training: its progress, its Stop (a request
file, no signal) and its failure, from the evaluation's own status (pytest tests/app/test_eval_at_end_page.py)."""

from __future__ import annotations

import time

import psutil

from app.i18n import ZH
from pages_helpers import goto, make_run, texts
from trainer_core.evaluation import background
from trainer_core.runs import protocol


def test_the_runs_page_shows_and_stops_the_evaluation_started_at_the_end_of_training(app, runs_root):
    run = make_run(runs_root, "done", "completed", final=True)
    (run / "eval").mkdir()
    # This test process stands in for the evaluation process (alive, its start time recorded), as make_run's
    # alive=True does for a supervisor.
    me = psutil.Process()
    status = {"state": background.RUNNING, "pid": me.pid, "create_time": me.create_time(), "started": time.time(),
              "models": ["base", "final"], "label": "base", "done": 3, "total": 48, "error": None}
    protocol.write_json_atomic(background.status_path(run), status)
    goto(app, "pages/runs.py")
    assert not app.exception, [e.value for e in app.exception]
    assert app.button(key="eval.start").proto.disabled
    shown = ZH["eval.progress"].format(model="base", done=3, total=48, models="base, final")
    assert shown in [p.proto.text for p in app.get("progress")]
    app.button(key="eval.stop").click().run()
    assert (run / "eval" / background.STOP).is_file()  # the process polls for it; nothing is signalled
    # The evaluation failed: the page says so from its status; the run stays completed.
    protocol.write_json_atomic(background.status_path(run), status | {"state": background.FAILED,
                                                                      "error": "out of memory"})
    app.run()
    assert ZH["eval.failed"].format(error="out of memory") in texts(app, "error")
    assert not app.button(key="eval.start").proto.disabled
    assert protocol.read_status(run).state == protocol.COMPLETED
