# .venv/bin/python -m pytest tests/test_runs.py -q
"""Run directories appear whole or not at all, under names that never collide."""

import threading

import pytest

from trainer_core.paths import PROJECT_ROOT
from trainer_core.runs import protocol as rd
from trainer_core.runs import registry as runs
from trainer_core.config.run_config import load_config
from trainer_core.errors import UserError

QUICK = PROJECT_ROOT / "configs" / "quickstart.yaml"


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
