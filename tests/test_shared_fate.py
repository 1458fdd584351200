# .venv/bin/python -m pytest tests/test_shared_fate.py -q    (slow: real 2-rank deepspeed runs, killed piece by piece)
"""No run outlives its state: kill -9 the supervisor, DeepSpeed's runner or its `launch` process of a running 2-rank
run, and every process of the run ends (the ranks save first), the state stays live until the last one is gone and
then reads `failed` with the cause, the device lock is held exactly as long, and `stop --force` is a no-op after."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from helpers import CPU_LOCK, cli, detach, quick_sets, rank_pids, run_pids, wait_for
from trainer_core.runs import protocol
from trainer_core.runs.device_locks import holder as lock_holder
from trainer_core.runs.state import read_state

pytestmark = pytest.mark.slow



def _pid_of(run: Path, target: str) -> int:
    if target == "supervisor":
        return int(protocol.read_json(run / protocol.MANIFEST)["pid"])
    module = {"runner": "deepspeed.launcher.runner", "launch": "deepspeed.launcher.launch"}[target]
    for pid in run_pids(run):
        try:
            if module in psutil.Process(pid).cmdline():
                return pid
        except psutil.Error:
            continue
    raise AssertionError(f"no {target} process in the run")


@pytest.mark.parametrize("target,cause,code", [
    ("supervisor", "supervisor process was lost", "training.lost_saved"),  # rank 0's own record: nobody else is left
    ("runner", "DeepSpeed's runner process was killed by SIGKILL while", "runs.failed_asked_to_save"),
    ("launch", "DeepSpeed's launch process was killed by SIGKILL while", "runs.failed_asked_to_save"),
])
def test_killing_a_process_above_the_ranks_ends_the_whole_run_after_a_save(runs_root, target, cause, code):
    run = detach(*quick_sets(**{"placement.num_ranks": 2, "train.max_steps": 400, "train.save_steps": 1000,
                                "name": f"kill-{target}"}))
    wait_for(lambda: protocol.read_status(run).step >= 2, 300, "two training steps")
    step_at_kill = protocol.read_status(run).step
    os.kill(_pid_of(run, target), signal.SIGKILL)

    # Until the last process is gone the run reads live and its device stays locked; then failed, and free.
    deadline = time.time() + 240
    observed_live = False
    while True:
        ranks, st, held = rank_pids(run), read_state(run), lock_holder(CPU_LOCK)
        pids = run_pids(run)
        if not pids:
            break
        if ranks:
            assert st.state in protocol.LIVE, (st.state, st.error)
            assert held == str(run), "a rank is alive: its device must stay locked"
            observed_live = True
        assert time.time() < deadline, f"processes of the run left: {pids}"
        time.sleep(0.3)
    st = wait_for(lambda: (s := read_state(run)).state in protocol.TERMINAL and s, 30, "a final state")
    assert observed_live
    assert st.state == protocol.FAILED and cause in st.error, st.error
    assert st.error_text is not None and st.error_text.code == code and str(st.error_text) == st.error
    # The run's last process (the supervisor, just after writing the end) still holds the lock for a moment.
    wait_for(lambda: lock_holder(CPU_LOCK) is None, 30, "the lock to be free once the last process is gone")
    saved = protocol.latest_checkpoint(run)
    assert saved is not None and protocol.checkpoint_step(saved) >= step_at_kill, "the ranks save before they exit"
    assert not (run / protocol.FINAL).exists()

    again = cli("stop", str(run), "--force")
    assert again.returncode == 0 and "no process left to end" in again.stdout, again.stderr
