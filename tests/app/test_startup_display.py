# .venv/bin/python -m pytest tests/app/test_startup_display.py -q
"""A starting run shows which start-up step it is at, with progress: on the Monitor, in the sidebar and in `status`
(issue 31, item 7). The run is a directory as the supervisor and rank 0 leave it at that step."""

from __future__ import annotations

from app.i18n import EN, ZH
from pages_helpers import goto, make_run
from trainer_core.runs import protocol
from trainer_core.training import ranks


def starting_run(runs_root, phase: str):
    run = make_run(runs_root, "s", protocol.STARTING, steps=0, alive=True)
    protocol.update_status(run, step=0, total_steps=None, loss=None, eval_loss=None, eta_s=None,
                           **protocol.startup_phase(phase))
    return run


def test_the_monitor_and_sidebar_show_the_startup_step_with_progress(app, runs_root):
    starting_run(runs_root, protocol.PHASE_LOADING_MODEL)
    done, total = protocol.STARTUP_PHASES.index(protocol.PHASE_LOADING_MODEL) + 1, len(protocol.STARTUP_PHASES)
    goto(app, "pages/monitor.py")
    step = f"{ZH['state.starting']} · {ZH['phase.loading the model']} {done}/{total}"
    bar = app.get("progress")[0].proto
    assert step in bar.text and bar.value == 100 * done // total
    assert any(m.value.endswith(f"**{ZH['state.starting']}**] · {ZH['phase.loading the model']} {done}/{total}")
               for m in app.sidebar.markdown)
    app.radio(key="lang").set_value("en").run()
    assert f"starting · {EN['phase.loading the model']} {done}/{total}" in app.get("progress")[0].proto.text


def test_every_startup_step_is_translated():
    for phase in protocol.STARTUP_PHASES:
        assert f"phase.{phase}" in ZH and f"phase.{phase}" in EN


def test_status_names_the_startup_step(runs_root, capsys):
    from trainer_core.cli import main

    run = starting_run(runs_root, protocol.PHASE_PREPARING_DATA)
    assert main(["status", str(run)]) == 0
    done = protocol.STARTUP_PHASES.index(protocol.PHASE_PREPARING_DATA) + 1
    assert f"s: starting (preparing data {done}/{len(protocol.STARTUP_PHASES)})" in capsys.readouterr().out


def test_a_stop_request_is_honoured_at_the_next_startup_step(tmp_path):
    """A single rank (no process group) checks control.json itself at each step."""
    protocol.write_status(tmp_path, protocol.Status(state=protocol.STARTING))
    ranks.startup_step(tmp_path, protocol.PHASE_PREPARING_DATA)
    assert protocol.read_status(tmp_path).phase == protocol.PHASE_PREPARING_DATA
    protocol.request(tmp_path, protocol.SAVE_AND_STOP)
    try:
        ranks.startup_step(tmp_path, protocol.PHASE_LOADING_MODEL)
    except ranks.StoppedStarting:
        pass
    else:
        raise AssertionError("the stop request was not honoured")
    assert protocol.read_status(tmp_path).phase == protocol.PHASE_PREPARING_DATA
