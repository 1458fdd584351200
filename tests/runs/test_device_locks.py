# .venv/bin/python -m pytest tests/runs/test_device_locks.py -q
"""Device locks are the machine's: taken exclusively once, then shared by the supervisor and the ranks of one run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trainer_core.runs import device_locks
from trainer_core.common.errors import UserError
from trainer_core.common.paths import PROJECT_ROOT

KEY = "testhost-gpu0"


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(device_locks.LOCK_DIR_ENV, str(tmp_path / "locks"))
    return tmp_path / "locks"


def _close(fds):
    for fd in fds:
        os.close(fd)


def test_a_held_device_is_refused_naming_the_holding_run(lock_dir, tmp_path):
    run_a, run_b = tmp_path / "runs-a" / "first", tmp_path / "runs-b" / "second"  # two runs folders
    fds = device_locks.acquire(run_a, [KEY])
    assert device_locks.holder(KEY) == str(run_a)
    with pytest.raises(UserError, match=f"{KEY} is in use by run {run_a}"):
        device_locks.acquire(run_b, [KEY])
    _close(fds)
    assert device_locks.holder(KEY) is None
    _close(device_locks.acquire(run_b, [KEY]))


def test_the_lock_stays_taken_while_any_rank_of_the_run_holds_it(lock_dir, tmp_path):
    run = tmp_path / "runs" / "r"
    supervisor = device_locks.acquire(run, [KEY, "testhost-gpu1"])
    rank0 = device_locks.hold_as_rank(run, [KEY, "testhost-gpu1"])
    _close(supervisor)  # the supervisor dies first (kill -9)
    assert device_locks.holder(KEY) == str(run)
    with pytest.raises(UserError, match="in use by run"):
        device_locks.acquire(tmp_path / "runs" / "next", [KEY])
    _close(rank0)  # the last process of the run is gone
    assert device_locks.holder(KEY) is None


def test_a_rank_never_joins_a_lock_another_run_took(lock_dir, tmp_path):
    """The supervisor died before its ranks started and a new run took the device: the old ranks must not train."""
    old, new = tmp_path / "runs" / "old", tmp_path / "runs" / "new"
    _close(device_locks.acquire(old, [KEY]))
    fds = device_locks.acquire(new, [KEY])
    with pytest.raises(UserError, match=f"no longer held for run {old.name}"):
        device_locks.hold_as_rank(old, [KEY])
    _close(fds)


def test_the_default_lock_folder_is_per_machine_not_per_runs_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(device_locks.LOCK_DIR_ENV, raising=False)
    monkeypatch.setenv("TRAINER_RUNS_ROOT", str(tmp_path / "runs"))
    d = device_locks.lock_dir()
    assert d.name == "trainer-studio" and tmp_path not in d.parents
    assert d.stat().st_mode & 0o1777 == 0o1777  # every user of the machine can take a lock there


def test_an_unwritable_runs_folder_is_one_line_and_exit_2(tmp_path):
    """sysfs refuses mkdir even to root; a read-only mount gives EROFS the same way."""
    env = dict(os.environ, TRAINER_RUNS_ROOT="/sys/trainer-studio-runs", TRAINER_LOCK_DIR=str(tmp_path / "l"))
    proc = subprocess.run([sys.executable, "-m", "trainer_core", "train", "configs/quickstart.yaml"], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: the runs folder /sys/trainer-studio-runs is not writable (Operation not permitted); make it "
        "writable or set TRAINER_RUNS_ROOT to a folder that is"]
