# .venv/bin/python -m pytest tests/runs/test_supervisor.py -q    (slow: real detached deepspeed runs on CPU)
"""Run supervision with real processes: detach, status from disk, save-then-stop, resume, kill -9, locks."""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from app.messages_zh import MESSAGES_ZH
from helpers import CPU_LOCK, cli, detach, quick_sets, run_pids, wait_for
from trainer_core.runs import protocol
from trainer_core.runs.device_locks import holder as lock_holder
from trainer_core.runs.state import read_state
from trainer_core.common.tailing import read_all_rows

pytestmark = pytest.mark.slow

QUICKSTART = "configs/quickstart.yaml"






def status_json(run: Path) -> dict:
    return json.loads(cli("status", str(run), "--json", check=True).stdout)



def test_detached_two_rank_run_outlives_its_launcher_and_holds_the_cpu_lock(runs_root, monkeypatch):
    run = detach(*quick_sets(**{"placement.num_ranks": 2, "name": "detached"}))
    # The CLI process that started it has exited; the run is in its own session and keeps going.
    manifest = protocol.read_json(run / protocol.MANIFEST)
    assert manifest["pgid"] == manifest["pid"] and manifest["pgid"] != os.getpgid(0)
    st = wait_for(lambda: (s := status_json(run))["state"] == "running" and s.get("step", 0) >= 1 and s,
                  240, "training progress")
    assert st["total_steps"] > st["step"] >= 1 and st["alive"]

    # A second launch on the same device (this machine's CPU) is refused and leaves no run directory.
    before = sorted(p.name for p in runs_root.iterdir())
    second = cli("train", QUICKSTART, "--detach", "--set", "name=second", timeout=120)
    assert second.returncode == 2
    assert f"cpu is in use by run {run}" in second.stderr
    assert sorted(p.name for p in runs_root.iterdir()) == before
    # Nor from a dashboard with another runs folder: the locks are the machine's, not the folder's.
    other = runs_root.parent / "other-runs"
    monkeypatch.setenv("TRAINER_RUNS_ROOT", str(other))
    third = cli("train", QUICKSTART, "--detach", "--set", "name=third", timeout=120)
    monkeypatch.setenv("TRAINER_RUNS_ROOT", str(runs_root))
    assert third.returncode == 2 and f"cpu is in use by run {run}" in third.stderr, third.stderr
    assert not any(other.iterdir())

    wait_for(lambda: status_json(run)["state"] == "completed", 400, "completion")
    final = protocol.read_status(run)
    assert final.exit_code == 0 and final.state == protocol.COMPLETED
    # The run's last process (the supervisor, just after writing the end) still holds the lock for a moment.
    wait_for(lambda: lock_holder(CPU_LOCK) is None, 30, "the lock to be free once the last process is gone")
    samples = read_all_rows(run / protocol.RESOURCES)
    assert any(len(s["ranks"]) == 2 and all(r["rss_bytes"] > 50 * 2**20 for r in s["ranks"]) for s in samples)
    assert {r["rank"] for s in samples for r in s["ranks"]} == {0, 1}


def test_stop_saves_then_ends_every_process_and_resume_finishes(runs_root):
    run = detach(*quick_sets(**{"train.max_steps": 30, "train.save_steps": 1000, "name": "stoppable"}))
    wait_for(lambda: protocol.read_status(run).step >= 3, 240, "three steps")
    pids = run_pids(run)
    assert len(pids) >= 3  # supervisor, deepspeed launcher(s), rank

    out = cli("stop", str(run), timeout=300)
    assert out.returncode == 0, out.stderr
    st = read_state(run)
    assert st.state == protocol.STOPPED and not st.alive
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    # The run's last process (the supervisor, just after writing the end) still holds the lock for a moment.
    wait_for(lambda: lock_holder(CPU_LOCK) is None, 30, "the lock to be free once the last process is gone")
    ckpts = protocol.complete_checkpoints(run)
    assert len(ckpts) == 1, "stop must save a complete checkpoint (save_steps alone would not have)"
    stopped_at = protocol.checkpoint_step(ckpts[0])
    assert 3 <= stopped_at < 30

    first = st.run_s
    time.sleep(3)  # time spent stopped: not part of the run's time
    res = cli("resume", str(run), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_state(run).state == protocol.COMPLETED and protocol.has_final(run)
    # The run's time is both segments added up (the Monitor and Runs pages show it), without the pause between.
    done = read_state(run)
    (start, end), = done.segments
    assert abs((end - start) - first) < 0.01
    second = done.ended - protocol.read_json(run / protocol.MANIFEST)["started"]
    assert abs(done.run_s - (first + second)) < 0.01 and done.run_s < done.ended - done.created - 2.5
    steps = [r["step"] for r in read_all_rows(run / protocol.METRICS) if r.get("loss") is not None]
    # Resumed from the saved step: the steps after it are trained once more each, up to max_steps.
    assert steps[-1] == 30 and steps.count(stopped_at + 1) == 1 and max(steps) == 30
    assert "resuming from" in (run / protocol.LOG).read_text()


def test_kill_9_during_a_checkpoint_save_is_never_offered(runs_root):
    # A save every 2 steps: the first is the fallback, the next six are chances to catch one in progress (a loaded
    # machine has let three go by); few enough steps that the resume is short.
    run = detach(*quick_sets(**{"train.max_steps": 16, "train.save_steps": 2, "name": "killed"}))
    ckroot = run / protocol.CHECKPOINTS

    def partial_checkpoint():
        done = {p.name for p in protocol.complete_checkpoints(run)}
        if not done:
            return None  # wait for one complete checkpoint to fall back to
        for p in ckroot.glob("checkpoint-*"):
            if p.name not in done and not (p / protocol.COMPLETE_MARKER).exists():
                return p
        return None

    partial = wait_for(partial_checkpoint, 300, "a save in progress", interval=0.005)
    os.killpg(int(protocol.read_json(run / protocol.MANIFEST)["pgid"]), signal.SIGKILL)
    wait_for(lambda: not run_pids(run), 20, "every process gone")
    complete = [protocol.checkpoint_step(p) for p in protocol.complete_checkpoints(run)]
    partial_step = protocol.checkpoint_step(partial)
    assert partial_step not in complete, "a checkpoint without its marker was offered"
    st = read_state(run)
    assert st.state == protocol.FAILED and st.interrupted
    assert partial_step not in st.checkpoints
    # The kernel drops a killed process's flock when it finally releases the file, which a loaded machine can do a
    # moment after the process is gone from /proc.
    wait_for(lambda: lock_holder(CPU_LOCK) is None, 10, "kill -9 to free the lock")

    res = cli("resume", str(run), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (run / protocol.LOG).read_text()
    assert f"resuming from {run / protocol.CHECKPOINTS / f'checkpoint-{max(complete)}'}" in log
    assert read_state(run).state == protocol.COMPLETED


def test_a_model_gone_by_launch_time_ends_failed_with_the_root_error(runs_root, starter_model, tmp_path):
    from trainer_core.config.run_config import load_config
    from trainer_core.runs.orchestrate import create_run
    from trainer_core.runs.supervisor import start

    moved = tmp_path / "model-on-a-share"
    shutil.copytree(starter_model, moved)
    run = create_run(load_config(QUICKSTART, [f"model.path={moved}", "name=model-gone"]))  # preflight passes
    shutil.rmtree(moved)  # the share is unmounted / the folder moved before the run starts
    start(run, detach=True)
    wait_for(lambda: read_state(run).state == protocol.FAILED, 240, "failure")
    st = status_json(run)  # the CLI's JSON: the format on disk and on stdout
    assert st["state"] == "failed" and st["exit_code"] not in (0, None)
    assert st["error"] == f"model.path {moved} is not a directory: point it at a local model folder " \
        "(run `python -m trainer_core prepare-models` for the starter model)", st["error"]
    assert "Traceback" not in st["error"]
    # The same reason with its own code (rank 0 recorded the user error it stopped on), so the dashboard says it in
    # Chinese: exactly the sentence the model check itself has in app/messages_zh.py.
    assert st["error_text"]["code"] == "models.path_not_dir", st.get("error_text")
    assert read_state(run).error_text.render(MESSAGES_ZH.get) == MESSAGES_ZH["models.path_not_dir"].format(
        path=str(moved))
    # The run's last process (the supervisor, just after writing the end) still holds the lock for a moment.
    wait_for(lambda: lock_holder(CPU_LOCK) is None, 30, "the lock to be free once the last process is gone")
