# .venv/bin/python -m pytest tests/runs/test_stop_starting.py -q    (slow: real detached deepspeed runs on CPU)
"""Stop during start-up, with real runs: the run ends `stopped` within seconds, before training a step, saving
nothing, whether the ranks leave by themselves at their next start-up step or sit in a step they cannot leave."""

import os
import signal
import time
from pathlib import Path

import pytest

from helpers import cli, detach, quick_sets, rank_pids, run_pids, wait_for
from trainer_core.runs import protocol
from trainer_core.runs.state import read_state

pytestmark = pytest.mark.slow

# Generous for a loaded shared machine; on a quiet one a stop during start-up takes a few seconds.
STOP_BOUND_S = 30.0


@pytest.fixture
def started():
    """Runs started by the test; any still live at its end (a failed test) are force-stopped."""
    runs: list[Path] = []
    yield runs
    for run in runs:
        if not read_state(run).terminal:
            cli("stop", str(run), "--force", timeout=120)


def stop_and_time(run: Path) -> float:
    t0 = time.time()
    cli("stop", str(run), check=True, timeout=120)
    wait_for(lambda: read_state(run).terminal, STOP_BOUND_S, "the stopped state")
    return time.time() - t0


def assert_stopped_before_training(run: Path, took: float) -> None:
    state = read_state(run)
    print(f"stop during start-up took {took:.1f} s")
    assert took < STOP_BOUND_S, f"stop during start-up took {took:.1f} s"
    assert state.state == protocol.STOPPED and not state.error, (state.state, state.error)
    assert state.note_text is not None and state.note_text.code == "runs.stopped_starting"
    assert state.step == 0 and state.last_checkpoint is None and state.started_training is None
    assert not protocol.complete_checkpoints(run) and not list((run / protocol.CHECKPOINTS).glob("checkpoint-*"))
    assert not (run / protocol.METRICS).exists() or not (run / protocol.METRICS).read_text().strip()
    wait_for(lambda: not run_pids(run), 30, "every process of the run to exit")
    # Nothing to resume from: a resume starts from scratch.
    assert protocol.latest_checkpoint(run) is None


def test_stop_at_a_startup_step_ends_the_run_before_a_step(runs_root, started):
    """Two ranks: the stop is asked once rank 0 reports a start-up step after the process group is up; the ranks
    leave together at their next step (or the supervisor ends them if the step is long)."""
    run = detach(*quick_sets(**{"placement.num_ranks": 2, "name": "stop-starting"}))
    started.append(run)
    wait_for(lambda: protocol.read_status(run).phase in (protocol.PHASE_PREPARING_DATA, protocol.PHASE_LOADING_MODEL,
                                                         protocol.PHASE_BUILDING_KERNELS),
             240, "a start-up step after joining", interval=0.05)
    st = protocol.read_status(run)
    assert st.state == protocol.STARTING and st.phase_total == len(protocol.STARTUP_PHASES) and st.phase_done >= 3
    assert_stopped_before_training(run, stop_and_time(run))


def test_stop_ends_ranks_stuck_in_a_startup_step(runs_root, started):
    """A rank inside a step it cannot leave (a 7B's load, a kernel build) is stood in for by a rank that is frozen
    (SIGSTOP) at a start-up step: it never reaches the next check, so the supervisor must end the run's processes."""
    run = detach(*quick_sets(**{"name": "stuck-starting"}))
    started.append(run)
    wait_for(lambda: protocol.read_status(run).phase in protocol.STARTUP_PHASES[2:] and rank_pids(run), 240,
             "a rank at a start-up step", interval=0.05)
    for pid in rank_pids(run):
        os.kill(pid, signal.SIGSTOP)  # a process of this test's own run (rank_pids: members of its group)
    assert_stopped_before_training(run, stop_and_time(run))
    assert "stopped during start-up; ended" in (run / protocol.LOG).read_text(errors="replace")
