# .venv/bin/python -m pytest tests/test_runs.py -q
"""Run directories appear whole or not at all, under names that never collide."""

import threading

import pytest

from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.runs import orchestrate
from trainer_core.runs import protocol
from trainer_core.runs import registry
from trainer_core.config.run_config import load_config
from trainer_core.common.errors import UserError

QUICK = PROJECT_ROOT / "configs" / "quickstart.yaml"


def visible(root):
    return sorted(p.name for p in root.iterdir())


def test_simultaneous_unnamed_runs_get_distinct_complete_directories(runs_root, starter_model, monkeypatch):
    monkeypatch.setattr(registry, "new_run_name", lambda cfg: cfg.name or "run-same-second")
    cfg = load_config(QUICK)
    made, barrier = [], threading.Barrier(3)

    def create():
        barrier.wait()
        made.append(orchestrate.create_run(cfg))

    threads = [threading.Thread(target=create) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(p.name for p in made) == ["run-same-second", "run-same-second-2", "run-same-second-3"]
    for run in made:
        assert load_config(run / protocol.CONFIG).name == run.name and protocol.read_status(run).state == protocol.QUEUED
    assert visible(runs_root) == sorted(p.name for p in made), "no temporary or reserved leftovers"


def test_an_explicit_name_is_never_reused(runs_root, starter_model):
    orchestrate.create_run(load_config(QUICK, ["name=mine"]))
    with pytest.raises(UserError, match="a run called 'mine' already exists"):
        orchestrate.create_run(load_config(QUICK, ["name=mine"]))
    assert visible(runs_root) == ["mine"]


def test_a_failure_while_writing_leaves_nothing(runs_root, starter_model, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk went away")

    monkeypatch.setattr(orchestrate, "write_json", boom)  # the DeepSpeed JSON, written after config.yaml
    with pytest.raises(OSError):
        orchestrate.create_run(load_config(QUICK, ["name=broken"]))
    assert visible(runs_root) == []


# ---------------------------------------------------------------- plan: what launching would do

def test_plan_resolves_paths_from_the_project_root_and_writes_nothing(runs_root, starter_model):
    p = orchestrate.plan(load_config(QUICK, ["deepspeed.config_file=configs/deepspeed/zero2.json"]))
    # models/ may be a link to a shared folder: the resolved path is where it really is.
    assert p.cfg.model.path == str((PROJECT_ROOT / "models" / "qwen2-starter").resolve())
    assert p.cfg.data.path == str((PROJECT_ROOT / "data" / "sample_zhenhuan.jsonl").resolve())
    assert p.cfg.deepspeed.config_file == str((PROJECT_ROOT / "configs" / "deepspeed" / "zero2.json").resolve())
    (argv,) = p.argv
    assert argv[argv.index("--run-dir") + 1] == str(p.run_dir) and p.run_dir.parent == runs_root
    assert set(p.cluster_files) == {"launch_node.sh", "launch_slurm.sbatch"}
    assert p.memory is not None and p.memory_problem is None and p.n_records > 0
    assert visible(runs_root) == []


def test_a_deepspeed_file_with_stage_3_gets_a_stage_3_memory_plan(runs_root, starter_model):
    # The form says ZeRO-2 with the optimizer offloaded (the quickstart); the file that runs says ZeRO-3.
    from_file = orchestrate.plan(load_config(QUICK, ["deepspeed.config_file=configs/deepspeed/zero3.json"]))
    assert from_file.ds_config["zero_optimization"]["stage"] == 3
    ds = from_file.cfg.deepspeed
    assert (ds.stage, ds.offload_optimizer, ds.offload_param) == (3, "none", "none")
    by_form = orchestrate.plan(load_config(QUICK, ["deepspeed.stage=3", "deepspeed.offload_optimizer=none"]))
    form_zero2 = orchestrate.plan(load_config(QUICK))
    assert from_file.memory == by_form.memory != form_zero2.memory


def test_the_created_run_saves_the_zero_settings_of_its_deepspeed_file(runs_root, starter_model):
    run = orchestrate.create_run(load_config(QUICK, ["name=z3", "deepspeed.config_file=configs/deepspeed/zero3.json"]))
    saved = load_config(run / protocol.CONFIG)  # what the trainer reads, and logs as its ZeRO stage
    assert saved.deepspeed.stage == 3 and saved.deepspeed.offload_optimizer == "none"
    assert saved.deepspeed.config_file == str((PROJECT_ROOT / "configs" / "deepspeed" / "zero3.json").resolve())


def test_the_supervisor_tells_the_ranks_on_their_command_line(tmp_path):
    from trainer_core.runs.launch import node_argv

    cfg = load_config(QUICK)
    assert node_argv(cfg, tmp_path, supervised=True)[-1] == "--supervised"
    assert "--supervised" not in node_argv(cfg, tmp_path)  # by hand, Slurm, `plan`: the ranks record the end


# ---------------------------------------------------------------------------------------------------- resume from a chosen checkpoint


def _stopped_run_with_checkpoints(runs_root):
    """A stopped run with complete checkpoints 4 and 8, a partial one at 10 and metric rows up to step 10."""
    import json

    from test_app_pages import make_run

    run = make_run(runs_root, "branchy", "stopped", steps=8)
    for step, complete in ((4, True), (10, False)):
        (run / protocol.CHECKPOINTS / f"checkpoint-{step}").mkdir()
        if complete:
            (run / protocol.CHECKPOINTS / f"checkpoint-{step}" / protocol.COMPLETE_MARKER).write_text("{}")
    with open(run / protocol.METRICS, "a") as f:
        f.write(json.dumps({"step": 10, "total_steps": 10, "loss": 8.0}) + "\n")
    return run


def _metric_steps(run):
    from trainer_core.common.tailing import read_all_rows

    return sorted({r["step"] for r in read_all_rows(run / protocol.METRICS)})


def test_resume_from_a_checkpoint_that_does_not_exist_is_refused_naming_the_complete_ones(runs_root, starter_model):
    from helpers import cli

    run = _stopped_run_with_checkpoints(runs_root)
    before = sorted(p.name for p in (run / protocol.CHECKPOINTS).iterdir()), (run / protocol.METRICS).read_text()
    for step in ("10", "7"):  # partial, absent
        res = cli("resume", str(run), "--checkpoint", step, timeout=120)
        assert res.returncode == 2 and res.stderr.strip().splitlines() == [
            f"error: run branchy has no complete checkpoint {step}; complete checkpoints: 4, 8"], res.stderr
    assert (sorted(p.name for p in (run / protocol.CHECKPOINTS).iterdir()), (run / protocol.METRICS).read_text()) == before
    assert not (run / protocol.MANIFEST).exists()


def test_resume_from_an_older_checkpoint_drops_the_later_history(runs_root, starter_model, monkeypatch):
    """The supervisor's process start is replaced by a recorder here (the real resume is in test_supervisor and the
    browser test); everything before it is the real code."""
    from trainer_core.runs import lifecycle

    run = _stopped_run_with_checkpoints(runs_root)
    started = []
    monkeypatch.setattr(lifecycle, "start", lambda run, detach, resume_from: started.append(resume_from))
    assert lifecycle.resume(run, checkpoint=4) == run / protocol.CHECKPOINTS / "checkpoint-4"
    assert started == [run / protocol.CHECKPOINTS / "checkpoint-4"]
    assert sorted(p.name for p in (run / protocol.CHECKPOINTS).iterdir()) == ["checkpoint-4"]
    assert _metric_steps(run) == [1, 2, 3, 4]
    status = protocol.read_status(run)
    assert status.resumed_from == 4 and status.step == 4


def test_a_refused_resume_puts_the_later_checkpoints_back(runs_root, starter_model):
    """Devices busy (a real lock held by another run): the start is refused and nothing of the run is lost."""
    from helpers import CPU_LOCK
    from trainer_core.runs import device_locks, lifecycle

    run = _stopped_run_with_checkpoints(runs_root)
    before = sorted(p.name for p in (run / protocol.CHECKPOINTS).iterdir()), (run / protocol.METRICS).read_text()
    fds = device_locks.acquire(runs_root / "other", [CPU_LOCK])
    try:
        with pytest.raises(UserError, match="in use by run"):
            lifecycle.resume(run, checkpoint=4)
    finally:
        for fd in fds:
            __import__("os").close(fd)
    assert (sorted(p.name for p in (run / protocol.CHECKPOINTS).iterdir()), (run / protocol.METRICS).read_text()) == before
    assert [p.name for p in (run / protocol.CHECKPOINTS).glob(".superseded-*")] == []
    assert protocol.read_status(run).step == 8 and protocol.read_status(run).resumed_from is None
