# .venv/bin/python -m pytest tests/runs/test_run_ends.py -q    (the slow ones start real deepspeed runs on CPU)
"""Issue 27: stop never touches a stranger, the device lock is held while any process of a run lives, every end is
told truly by whoever sees it, the foreground CLI never leaves training behind, and killed saves leave nothing."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from helpers import CPU_LOCK, cli, detach, quick_sets, wait_for
from trainer_core.config.run_config import load_config
from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.runs import protocol
from trainer_core.runs.device_locks import holder as lock_holder
from trainer_core.runs.orchestrate import create_run
from trainer_core.runs.state import read_state

QUICKSTART = "configs/quickstart.yaml"
PARTS = ("trainer_core.runs.supervisor", "deepspeed.launcher.runner", "deepspeed.launcher.launch",
         "trainer_core.training.train")


def processes_of(run: Path) -> list[psutil.Process]:
    """Every living process of the run, found independently of the code under test: the supervisor, DeepSpeed's
    runner and launch, and the ranks all carry the run directory on their command line."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(run) in cmd and any(part in cmd for part in PARTS) and p.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(p)
    return out


def part(run: Path, name: str) -> psutil.Process:
    for p in processes_of(run):
        if name in p.cmdline():
            return p
    raise AssertionError(f"no {name} process in run {run.name}")


def finished_run(root: Path, state: str = protocol.FAILED) -> Path:
    """A real run directory (created as `train` creates it) that ran and ended long ago."""
    run = create_run(load_config(QUICKSTART, ["name=long-over"]), root)
    protocol.update_status(run, state=state, exit_code=1, ended=time.time() - 3600, error=None, step=12, total_steps=40,
                     phase=protocol.PHASE_TRAINING, eta_s=1317.0, loss=7.5)
    return run


TERMINAL_NAMES = {"COMPLETED", "FAILED", "STOPPED", *protocol.TERMINAL}
END_FIELDS = {"exit_code", "ended", "forced"}


def terminal_writes(tree) -> list[int]:
    """Lines of calls that write a terminal state or an end field (exit code, end time, forced) into status.json:
    update_status/write_status/Status(...) given a terminal state, or an end field with a value other than None."""
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                in ("update_status", "write_status", "Status")):
            continue
        for kw in node.keywords:
            value = kw.value
            name = value.attr if isinstance(value, ast.Attribute) else getattr(value, "value", None)
            if (kw.arg == "state" and name in TERMINAL_NAMES) or (
                    kw.arg in END_FIELDS and not (isinstance(value, ast.Constant) and value.value is None)):
                lines.append(node.lineno)
                break
    return lines


def test_a_runs_terminal_state_has_one_writer():
    """Only state.record_end writes how a run ended; the supervisor, rank 0 of a run launched without one, `stop`
    and readers all call it. (Before, training/train.py wrote it too, for runs launched by hand or by Slurm.)"""
    found = []
    for path in sorted([*(PROJECT_ROOT / "trainer_core").rglob("*.py"), *(PROJECT_ROOT / "app").glob("*.py"),
                        *(PROJECT_ROOT / "pages").glob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if path == PROJECT_ROOT / "trainer_core" / "runs" / "state.py":
            writer = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "record_end")
            assert not terminal_writes(writer)  # it writes what end_fields computes
            continue
        found += [f"{path.relative_to(PROJECT_ROOT)}:{line}" for line in terminal_writes(tree)]
    assert not found, f"terminal state written outside state.record_end: {found}"


@pytest.fixture
def stranger():
    """Somebody else's process group: `setsid sleep`, its pid the group id (what PID reuse hands a new process)."""
    proc = subprocess.Popen(["setsid", "sleep", "300"])
    wait_for(lambda: os.getpgid(proc.pid) == proc.pid and psutil.Process(proc.pid).name() == "sleep", 10,
             "the stranger's own session")
    yield psutil.Process(proc.pid)
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("force", [True, False])
def test_stop_of_an_ended_run_never_signals_the_stranger_that_has_its_group_id(runs_root, starter_model, stranger,
                                                                              force):
    run = finished_run(runs_root)
    # The honest simulation of PID reuse: the run's recorded supervisor pid and group id now belong to the stranger
    # (its recorded start time stays the supervisor's, from before the stranger existed).
    protocol.write_json_atomic(run / protocol.MANIFEST, {"pid": stranger.pid, "pgid": stranger.pid, "host": "here",
                                             "create_time": stranger.create_time() - 3600,
                                             "started": time.time() - 7200, "lock_keys": [CPU_LOCK]})
    before = (run / protocol.STATUS).read_bytes()
    out = cli("stop", str(run), *(["--force"] if force else []), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == [f"{run.name}: already ended, failed (checkpoints: []; no process "
                                               "left to end)"], out.stdout
    time.sleep(0.5)
    assert stranger.is_running() and stranger.status() != psutil.STATUS_ZOMBIE, "stop signalled a stranger"
    assert (run / protocol.STATUS).read_bytes() == before, "an ended run's state must not change"
    assert not (run / protocol.CONTROL).exists()


def test_an_ended_run_shows_no_phase_eta_or_live_loss(runs_root, starter_model):
    run = finished_run(runs_root, protocol.STOPPED)
    out = cli("status", str(run), check=True).stdout.strip()
    assert out == f"{run.name}: stopped  step 12/40  last loss 7.5", out
    st = json.loads(cli("status", str(run), "--json", check=True).stdout)
    assert st["phase"] is None and st["eta_s"] is None


def test_leftovers_of_a_killed_save_are_removed_at_stop_and_never_counted(runs_root, starter_model):
    run = finished_run(runs_root)
    complete = protocol.checkpoint_dir(run, 4)
    complete.mkdir(parents=True)
    protocol.mark_complete(complete, {"step": 4})
    for leftover in (protocol.checkpoint_dir(run, 2), protocol.checkpoint_dir(run, 6), run / ".final.tmp"):
        (leftover / "sub").mkdir(parents=True)
        (leftover / "sub" / "shard.bin").write_bytes(b"x" * 1000)
    st = json.loads(cli("status", str(run), "--json", check=True).stdout)
    assert st["checkpoints"] == [4] and not st["has_final"]
    out = cli("stop", str(run), timeout=60)
    assert out.returncode == 0 and "checkpoints: [4]" in out.stdout, out.stdout
    assert sorted(p.name for p in (run / protocol.CHECKPOINTS).iterdir()) == ["checkpoint-4"]
    assert not (run / ".final.tmp").exists()
    assert read_state(run).state == protocol.FAILED


# ---------------------------------------------------------------- real runs

class LockWatch:
    """Polls every 50 ms, from a thread, whether the device lock is free while a process of the run lives. The lock
    is checked first, then the processes are listed: a process alive after the lock was seen free was alive when it
    was (the run's processes only start from one another); it must still be alive 0.2 s later, so a process caught
    in the middle of exiting (its files already closed) is not counted."""

    def __init__(self, run: Path):
        self.run, self.gaps, self.polls = run, [], 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.is_set():
            held = lock_holder(CPU_LOCK) == str(self.run)
            alive = [] if held else processes_of(self.run)
            if alive:
                time.sleep(0.2)
                still = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
                if still:
                    self.gaps.append([" ".join(p.cmdline()[:6]) for p in still])
            self.polls += 1
            time.sleep(0.05)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def end_of(run: Path, timeout: float = 600):
    """Wait until no process of the run is left, then its state (which by then must be terminal)."""
    wait_for(lambda: not processes_of(run), timeout, "every process of the run to end", interval=0.3)
    return wait_for(lambda: (s := read_state(run)).terminal and s, 15, "a final state")


@pytest.mark.slow
@pytest.mark.parametrize("target,when", [
    (None, None),  # start to normal exit
    ("trainer_core.runs.supervisor", "starting"),  # before the ranks could join the lock themselves
    ("trainer_core.runs.supervisor", "training"),
    ("deepspeed.launcher.runner", "training"),
    ("deepspeed.launcher.launch", "training"),
])
def test_the_device_lock_is_held_while_any_process_of_the_run_lives(runs_root, target, when):
    run = detach(*quick_sets(**{"placement.num_ranks": 2, "train.max_steps": 2 if target is None else 400,
                                "train.save_steps": 1000, "data.eval_ratio": 0, "name": "locked"}))
    watch = LockWatch(run)
    try:
        if when == "starting":
            # Both ranks are up (loading) and nothing has trained yet.
            wait_for(lambda: sum("trainer_core.training.train" in p.cmdline() for p in processes_of(run)) == 2,
                     120, "both rank processes", interval=0.05)
            assert protocol.read_status(run).step == 0
        elif when == "training":
            wait_for(lambda: protocol.read_status(run).step >= 1, 300, "a training step")
        if target:
            os.kill(part(run, target).pid, signal.SIGKILL)
        st = end_of(run)
    finally:
        watch.stop()
    assert watch.polls > 20
    assert not watch.gaps, f"the device lock was free while these processes of the run lived: {watch.gaps[:3]}"
    assert st.state == (protocol.COMPLETED if target is None else protocol.FAILED), (st.state, st.error)
    wait_for(lambda: lock_holder(CPU_LOCK) is None, 10, "the lock to be free once the last process is gone")


@pytest.mark.slow
def test_kill_9_of_the_supervisor_while_consolidating_final_ends_completed(runs_root):
    run = detach(*quick_sets(**{"train.max_steps": 3, "train.save_steps": 0, "data.eval_ratio": 0,
                                "name": "consolidating"}))
    wait_for(lambda: protocol.read_status(run).phase == protocol.PHASE_CONSOLIDATING, 300, "consolidating final",
             interval=0.01)
    os.kill(int(protocol.read_manifest(run)["pid"]), signal.SIGKILL)
    st = end_of(run)
    assert protocol.has_final(run)
    assert st.state == protocol.COMPLETED and st.error is None, (st.state, st.error)
    assert st.note and "supervisor ended before recording it" in st.note
    # The reader that found no process left wrote the end, once, for everyone after it.
    on_disk = protocol.read_status(run)
    assert on_disk.state == protocol.COMPLETED and on_disk.note_text.code == "runs.completed_unrecorded"
    assert on_disk.phase is None and on_disk.eta_s is None and on_disk.ended is not None
    out = cli("status", str(run), check=True).stdout
    assert out.startswith("consolidating: completed  step 3/3  last loss") and "eta" not in out, out


@pytest.mark.slow
def test_sigterm_to_the_supervisor_saves_stops_and_says_so(runs_root):
    run = detach(*quick_sets(**{"train.max_steps": 400, "train.save_steps": 1000, "data.eval_ratio": 0,
                                "name": "terminated"}))
    wait_for(lambda: protocol.read_status(run).step >= 2, 600, "two training steps")
    os.kill(int(protocol.read_manifest(run)["pid"]), signal.SIGTERM)
    st = end_of(run)
    assert st.state == protocol.FAILED
    assert st.error.startswith("the run's supervisor was terminated by SIGTERM; they were asked to save and stop "
                               "(last complete checkpoint: "), st.error
    assert protocol.latest_checkpoint(run) is not None


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_a_foreground_train_stops_the_run_like_ctrl_c(runs_root, sig):
    proc = subprocess.Popen([sys.executable, "-m", "trainer_core", "train", QUICKSTART,
                             *quick_sets(**{"train.max_steps": 400, "train.save_steps": 1000, "data.eval_ratio": 0,
                                            "name": "foreground"})],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = runs_root / "foreground"
    try:
        wait_for(lambda: protocol.read_status(run).step >= 2, 600, "two training steps")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == str(run)
    assert not processes_of(run), "the CLI exited leaving its run training"
    st = read_state(run)
    assert st.state == protocol.STOPPED and st.checkpoints, (st.state, st.error)
    assert lock_holder(CPU_LOCK) is None


@pytest.mark.slow
def test_leftovers_of_a_killed_save_are_removed_at_start(runs_root, starter_model):
    from trainer_core.runs.lifecycle import stop
    from trainer_core.runs.supervisor import start

    run = create_run(load_config(QUICKSTART, ["name=leftovers", "train.max_steps=400"]))
    for leftover in (protocol.checkpoint_dir(run, 3), run / ".final.tmp"):
        leftover.mkdir(parents=True)
        (leftover / "shard.bin").write_bytes(b"x")
    start(run, detach=True)
    try:
        assert not protocol.checkpoint_dir(run, 3).exists() and not (run / ".final.tmp").exists()
    finally:
        stop(run, force=True)
    assert not processes_of(run)
