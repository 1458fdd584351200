"""Resume from an earlier checkpoint: status.json, the sidebar and the Monitor's curves show the resumed history only,
and the abandoned continuation's rows stay readable beside it.

The supervisor's process start is replaced by a recorder (the real resume runs in test_supervisor and the browser
test); everything else, the run directory, resume and the Monitor page (AppTest), is the real code."""

import json

import pytest

from pages_helpers import goto, make_run
from trainer_core.common.tailing import read_all_rows
from trainer_core.runs import lifecycle
from trainer_core.runs import protocol


def _branchy(runs_root):
    """Stopped at step 10 after a continuation past checkpoint 8: complete checkpoints 4 and 8, rows to step 10, and
    status.json's figures from step 10."""
    run = make_run(runs_root, "branchy", "stopped", steps=8)
    (run / protocol.CHECKPOINTS / "checkpoint-4").mkdir()
    (run / protocol.CHECKPOINTS / "checkpoint-4" / protocol.COMPLETE_MARKER).write_text("{}")
    with open(run / protocol.METRICS, "a") as f:
        for step in (9, 10):
            f.write(json.dumps({"step": step, "total_steps": 10, "loss": 8.0, "eval_loss": None,
                                "peak_mem_bytes": [2**30]}) + "\n")
        f.write(json.dumps({"step": 10, "total_steps": 10, "loss": None, "eval_loss": 7.5}) + "\n")
    protocol.update_status(run, step=10, loss=8.0, eval_loss=7.5, last_checkpoint=8)
    return run


def test_resume_from_an_earlier_checkpoint_shows_only_the_resumed_history(app, runs_root, monkeypatch):
    run = _branchy(runs_root)
    goto(app, "pages/monitor.py")  # the tab has read the old metrics.jsonl to its end
    assert {m.label: m.value for m in app.metric}["损失"] == "8.0000"

    def refuse(run, detach, resume_from):
        raise RuntimeError("devices busy")

    monkeypatch.setattr(lifecycle, "start", refuse)  # a refused start changes nothing
    with pytest.raises(RuntimeError):
        lifecycle.resume(run, checkpoint=4)
    status = protocol.read_status(run)
    assert (status.step, status.loss, status.eval_loss, status.last_checkpoint) == (10, 8.0, 7.5, 8)
    assert not (run / protocol.METRICS_ABANDONED).exists()
    assert [r["step"] for r in read_all_rows(run / protocol.METRICS)][-3:] == [9, 10, 10]

    monkeypatch.setattr(lifecycle, "start", lambda run, detach, resume_from: None)
    lifecycle.resume(run, checkpoint=4)
    status = protocol.read_status(run)
    assert (status.step, status.resumed_from, status.last_checkpoint) == (4, 4, 4)
    assert status.loss == pytest.approx(12 - 4 * 0.3) and status.eval_loss is None  # no evaluation up to step 4
    assert sorted(p.name for p in (run / protocol.CHECKPOINTS).iterdir()) == ["checkpoint-4"]
    abandoned = read_all_rows(run / protocol.METRICS_ABANDONED)
    assert [r["step"] for r in abandoned] == [5, 6, 7, 8, 8, 9, 10, 10]

    # The resumed run logs steps 5-16 before the tab looks again: the file is longer than the one the tab read.
    old_size = sum(len(json.dumps(r)) + 1 for r in abandoned)
    with open(run / protocol.METRICS, "a") as f:
        for step in range(5, 17):
            f.write(json.dumps({"step": step, "total_steps": 16, "loss": 5.0, "eval_loss": None,
                                "peak_mem_bytes": [2**30], "padding": "x" * 40}) + "\n")
    assert (run / protocol.METRICS).stat().st_size > old_size
    goto(app, "pages/monitor.py")
    assert not app.exception
    rows = app.session_state["mon.rows"][str(run / protocol.METRICS)][0]
    assert [r["step"] for r in rows if r.get("loss") is not None] == list(range(1, 17))
    assert all(r["loss"] == 5.0 for r in rows if r["step"] > 4), "a row of the abandoned continuation is drawn"
    assert not any(r.get("eval_loss") == 7.5 for r in rows)
    loss = f"{12 - 4 * 0.3:.4f}"  # status.json's loss until the resumed run writes its own
    assert {m.label: m.value for m in app.metric}["损失"] == loss
    assert any(loss in c.value for c in app.sidebar.caption)


@pytest.mark.slow
def test_a_real_resume_from_an_earlier_checkpoint_starts_from_its_figures(runs_root):
    """The real path: a deepspeed run stopped past checkpoint 8, resumed from checkpoint 4 through the CLI."""
    from helpers import cli, detach, quick_sets, wait_for

    run = detach(*quick_sets(**{"train.max_steps": 400, "train.save_steps": 4, "train.save_total_limit": 5,
                                "data.eval_ratio": 0, "name": "real-branchy"}))
    wait_for(lambda: protocol.read_status(run).step >= 9, 300, "step 9")
    assert cli("stop", str(run), timeout=300).returncode == 0
    stopped_at = protocol.read_status(run).last_checkpoint
    assert stopped_at >= 9 and 4 in [protocol.checkpoint_step(c) for c in protocol.complete_checkpoints(run)]

    res = cli("resume", str(run), "--checkpoint", "4", "--detach", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    status = protocol.read_status(run)  # before the resumed run has logged anything of its own
    loss_at_4 = next(r["loss"] for r in read_all_rows(run / protocol.METRICS) if r["step"] == 4 and r.get("loss"))
    assert (status.step, status.last_checkpoint, status.loss) == (4, 4, loss_at_4)
    assert {r["step"] for r in read_all_rows(run / protocol.METRICS_ABANDONED)} == set(range(5, stopped_at + 1))

    wait_for(lambda: protocol.read_status(run).step >= 6, 300, "the resumed run's step 6")
    assert cli("stop", str(run), timeout=300).returncode == 0
    steps = [r["step"] for r in read_all_rows(run / protocol.METRICS) if r.get("loss") is not None]
    assert steps == list(range(1, steps[-1] + 1)), "one history: the abandoned steps are not among the resumed ones"
    assert protocol.read_status(run).last_checkpoint == steps[-1] == protocol.checkpoint_step(protocol.latest_checkpoint(run))
