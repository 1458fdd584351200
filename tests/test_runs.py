# .venv/bin/python -m pytest tests/test_runs.py -q
"""Run directories appear whole or not at all, under names that never collide."""

import threading

import pytest

from conftest import ROOT
from trainer_core.runs import protocol as rd
from trainer_core.runs import registry as runs
from trainer_core.config.run_config import load_config
from trainer_core.errors import UserError

QUICK = ROOT / "configs" / "quickstart.yaml"


def visible(root):
    return sorted(p.name for p in root.iterdir())


def test_simultaneous_unnamed_runs_get_distinct_complete_directories(runs_root, starter_model, monkeypatch):
    monkeypatch.setattr(runs, "new_run_name", lambda cfg: cfg.name or "run-same-second")
    cfg = load_config(QUICK)
    made, barrier = [], threading.Barrier(3)

    def create():
        barrier.wait()
        made.append(runs.create_run(cfg))

    threads = [threading.Thread(target=create) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(p.name for p in made) == ["run-same-second", "run-same-second-2", "run-same-second-3"]
    for run in made:
        assert load_config(run / rd.CONFIG).name == run.name and rd.read_status(run).state == rd.QUEUED
    assert visible(runs_root) == sorted(p.name for p in made), "no temporary or reserved leftovers"


def test_an_explicit_name_is_never_reused(runs_root, starter_model):
    runs.create_run(load_config(QUICK, ["name=mine"]))
    with pytest.raises(UserError, match="a run called 'mine' already exists"):
        runs.create_run(load_config(QUICK, ["name=mine"]))
    assert visible(runs_root) == ["mine"]


def test_a_failure_while_writing_leaves_nothing(runs_root, starter_model, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk went away")

    monkeypatch.setattr(runs, "write_cluster_scripts", boom)
    with pytest.raises(OSError):
        runs.create_run(load_config(QUICK, ["name=broken"]))
    assert visible(runs_root) == []


# ---------------------------------------------------------------------------------------------------- resume from a chosen checkpoint


def _stopped_run_with_checkpoints(runs_root):
    """A stopped run with complete checkpoints 4 and 8, a partial one at 10 and metric rows up to step 10."""
    import json

    from test_app_pages import make_run

    run = make_run(runs_root, "branchy", "stopped", steps=8)
    for step, complete in ((4, True), (10, False)):
        (run / rd.CHECKPOINTS / f"checkpoint-{step}").mkdir()
        if complete:
            (run / rd.CHECKPOINTS / f"checkpoint-{step}" / rd.COMPLETE_MARKER).write_text("{}")
    with open(run / rd.METRICS, "a") as f:
        f.write(json.dumps({"step": 10, "total_steps": 10, "loss": 8.0}) + "\n")
    return run


def _metric_steps(run):
    from trainer_core.runs.tailing import read_all_rows

    return sorted({r["step"] for r in read_all_rows(run / rd.METRICS)})


def test_resume_from_a_checkpoint_that_does_not_exist_is_refused_naming_the_complete_ones(runs_root, starter_model):
    from conftest import cli

    run = _stopped_run_with_checkpoints(runs_root)
    before = sorted(p.name for p in (run / rd.CHECKPOINTS).iterdir()), (run / rd.METRICS).read_text()
    for step in ("10", "7"):  # partial, absent
        res = cli("resume", str(run), "--checkpoint", step, timeout=120)
        assert res.returncode == 2 and res.stderr.strip().splitlines() == [
            f"error: run branchy has no complete checkpoint {step}; complete checkpoints: 4, 8"], res.stderr
    assert (sorted(p.name for p in (run / rd.CHECKPOINTS).iterdir()), (run / rd.METRICS).read_text()) == before
    assert not (run / rd.MANIFEST).exists()


def test_resume_from_an_older_checkpoint_drops_the_later_history(runs_root, starter_model, monkeypatch):
    """The supervisor's process start is replaced by a recorder here (the real resume is in test_supervisor and the
    browser test); everything before it is the real code."""
    from trainer_core.runs import lifecycle

    run = _stopped_run_with_checkpoints(runs_root)
    started = []
    monkeypatch.setattr(lifecycle, "start", lambda run, detach, resume_from: started.append(resume_from))
    assert lifecycle.resume(run, checkpoint=4) == run / rd.CHECKPOINTS / "checkpoint-4"
    assert started == [run / rd.CHECKPOINTS / "checkpoint-4"]
    assert sorted(p.name for p in (run / rd.CHECKPOINTS).iterdir()) == ["checkpoint-4"]
    assert _metric_steps(run) == [1, 2, 3, 4]
    status = rd.read_status(run)
    assert status.resumed_from == 4 and status.step == 4


def test_a_refused_resume_puts_the_later_checkpoints_back(runs_root, starter_model):
    """Devices busy (a real lock held by another run): the start is refused and nothing of the run is lost."""
    from conftest import CPU_LOCK
    from trainer_core.runs import device_locks, lifecycle

    run = _stopped_run_with_checkpoints(runs_root)
    before = sorted(p.name for p in (run / rd.CHECKPOINTS).iterdir()), (run / rd.METRICS).read_text()
    fds = device_locks.acquire(runs_root / "other", [CPU_LOCK])
    try:
        with pytest.raises(UserError, match="in use by run"):
            lifecycle.resume(run, checkpoint=4)
    finally:
        for fd in fds:
            __import__("os").close(fd)
    assert (sorted(p.name for p in (run / rd.CHECKPOINTS).iterdir()), (run / rd.METRICS).read_text()) == before
    assert [p.name for p in (run / rd.CHECKPOINTS).glob(".superseded-*")] == []
    assert rd.read_status(run).step == 8 and rd.read_status(run).resumed_from is None
