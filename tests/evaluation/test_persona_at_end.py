"""eval.persona_at_end: a completed run evaluates its final model against its base model by itself, in a process of
its own whose status is the evaluation's, never the run's (pytest tests/evaluation/test_persona_at_end.py)."""

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import cli, quick_sets, wait_for
from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.evaluation import background
from trainer_core.evaluation import persona_eval as pe
from trainer_core.runs import device_locks, protocol
from trainer_core.runs.supervisor import device_keys


def _fake_run(root, **config) -> Path:
    """A run directory that ended completed but has no model: its evaluation must fail."""
    run = root / "runs" / "nomodel"
    run.mkdir(parents=True)
    (run / protocol.CONFIG).write_text(json.dumps({"name": "nomodel", **config}))
    protocol.write_json_atomic(run / protocol.STATUS, {"state": protocol.COMPLETED, "exit_code": 0})
    return run


def test_a_failed_evaluation_is_recorded_in_its_own_status_not_the_runs(tmp_path):
    run = _fake_run(tmp_path)
    before = (run / protocol.STATUS).read_bytes()
    assert background.evaluate(run, pe.EvalSettings(max_records=2, max_new_tokens=4)) == background.FAILED
    status = background.read_status(run)
    assert status["state"] == background.FAILED and "no final model" in status["error"]
    assert (run / protocol.STATUS).read_bytes() == before
    assert pe.read_results(run) == {}


def test_a_status_left_running_by_a_killed_process_reads_as_failed(tmp_path):
    run = _fake_run(tmp_path)
    (run / "eval").mkdir()
    protocol.write_json_atomic(background.status_path(run), {"state": background.RUNNING, "pid": 1,
                                                             "create_time": 0.0})
    assert background.read_status(run)["state"] == background.FAILED
    assert not background.running(run)


@pytest.mark.slow
def test_a_completed_run_evaluates_final_and_base_by_itself(tmp_path, monkeypatch):
    """A real short run with eval.persona_at_end: training ends completed, the device lock is free while the
    evaluation runs, and eval/ ends with results for base and final; a second background evaluation stops on the
    Runs page's request (the stop file) within seconds and writes nothing partial."""
    monkeypatch.setenv("TRAINER_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("TRAINER_LOCK_DIR", str(tmp_path / "locks"))
    cli("train", "configs/quickstart.yaml", *quick_sets(**{
        "train.max_steps": 4, "train.save_steps": 0, "name": "atend", "eval.persona_at_end": "true",
        "eval.max_records": 3, "eval.max_new_tokens": 6}), check=True)
    run = tmp_path / "runs" / "atend"
    assert protocol.read_status(run).state == protocol.COMPLETED
    end_status = (run / protocol.STATUS).read_bytes()
    # The training devices are free as soon as the run's end is recorded, evaluation or not.
    keys = device_keys(run)
    assert all(device_locks.holder(k) is None for k in keys)
    status = wait_for(lambda: background.read_status(run).get("state") not in (None, background.RUNNING)
                      and background.read_status(run), 600, "the persona evaluation to end")
    assert status["state"] == background.DONE, (status, (run / "eval" / "eval.log").read_text()[-3000:])
    results = pe.read_results(run)
    assert list(results) == ["base", "final"]
    assert results["final"]["n_records"] == 3 and results["final"]["settings"]["max_new_tokens"] == 6
    assert (run / protocol.STATUS).read_bytes() == end_status  # the run's end is untouched

    # Stop: a longer background evaluation, stopped as the Runs page's Stop does.
    final_before = (run / "eval" / "final.json").read_bytes()
    proc = subprocess.Popen(background.argv(run, max_records=200, max_new_tokens=128), cwd=PROJECT_ROOT,
                            start_new_session=True)
    try:
        wait_for(lambda: background.read_status(run).get("pid") == proc.pid
                 and background.read_status(run).get("done", 0) > 0, 300, "the evaluation to make progress")
        background.request_stop(run)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert background.read_status(run)["state"] == background.STOPPED
    assert (run / "eval" / "final.json").read_bytes() == final_before
