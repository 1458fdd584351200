# .venv/bin/python -m pytest tests/test_faults.py -q    (slow: real deepspeed runs; the disk-full test mounts a tmpfs)
"""Faults with real processes: a rank killed, a full disk, shell metacharacters in every text field."""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import CPU_LOCK, cli, detach, quick_sets, rank_pids, run_pids, wait_for
from trainer_core.runs import protocol
from trainer_core.runs.device_locks import holder as lock_holder
from trainer_core.runs.state import read_state

pytestmark = pytest.mark.slow

QUICKSTART = "configs/quickstart.yaml"






def test_kill_9_of_one_rank_fails_the_run_with_the_cause_and_leaves_nothing(runs_root):
    run = detach(*quick_sets(**{"placement.num_ranks": 2, "train.max_steps": 40, "name": "rank-killed"}))
    wait_for(lambda: protocol.read_status(run).step >= 2, 240, "two steps")
    ranks = wait_for(lambda: len(p := rank_pids(run)) == 2 and p, 30, "both ranks")
    os.kill(ranks[1], signal.SIGKILL)
    st = wait_for(lambda: (s := read_state(run)).state in protocol.TERMINAL and s, 120, "the run to end")
    assert st.state == protocol.FAILED
    assert "killed by SIGKILL" in st.error, st.error
    assert st.error_text.code == "runs.failed_rank_sigkill" and st.error_text.params == {"signal": "SIGKILL"}
    wait_for(lambda: not run_pids(run), 30, "no process of the run left")
    # The run's last process (the supervisor, just after writing the end) still holds the lock for a moment.
    wait_for(lambda: lock_holder(CPU_LOCK) is None, 30, "the lock to be free once the last process is gone")
    again = cli("stop", str(run), "--force")  # idempotent: nothing left to end, still `failed`
    assert again.returncode == 0 and "failed" in again.stdout and "no process left to end" in again.stdout


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 330 MB tmpfs as the runs root: room for the run and one checkpoint (about 200 MB), not for two."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=330m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    monkeypatch.setenv("TRAINER_RUNS_ROOT", str(mnt))
    monkeypatch.setenv("TRAINER_LOCK_DIR", str(tmp_path / "locks"))
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_disk_full_while_saving_fails_naming_it_and_keeps_earlier_checkpoints(small_disk):
    run = detach(*quick_sets(**{"train.max_steps": 40, "train.save_steps": 4, "data.eval_ratio": 0,
                                "name": "disk-full"}))
    st = wait_for(lambda: (s := read_state(run)).state in protocol.TERMINAL and s, 400, "the run to end")
    assert st.state == protocol.FAILED
    assert st.error.startswith("no space left on device"), st.error
    # Written in place on the full disk, the coded reason too (status.json keeps room for it).
    assert st.error_text.code in ("runs.failed_no_space", "runs.failed_no_space_detail", "runs.failed_disk_full")
    assert str(st.error_text) == st.error
    complete = protocol.complete_checkpoints(run)
    assert complete, "the checkpoint that fitted must survive"
    weights = load_file(str(complete[0] / "model.safetensors"))  # intact: it loads
    assert weights["model.norm.weight"].shape == (64,)
    # The run's last process (the supervisor, just after writing the end) still holds the lock for a moment.
    wait_for(lambda: lock_holder(CPU_LOCK) is None, 30, "the lock to be free once the last process is gone")
    assert not protocol.has_final(run)


HOSTILE = "$(touch {m})`touch {m}`;touch {m};rm -rf {m}.dir|touch {m}&&touch {m}"


def test_shell_metacharacters_in_every_text_field_never_execute(runs_root, starter_model, tmp_path):
    marker = tmp_path / "pwned"
    hostile = HOSTILE.format(m=marker)
    (tmp_path / f"{marker}.dir").mkdir()
    # Model and data live under directories named with the payload; the persona carries it too.
    weird = tmp_path / "d$(touch x)`id`;a"
    weird.mkdir()
    model = weird / "m;rm -rf ~"
    shutil.copytree(starter_model, model)
    data = weird / "data $(touch y).jsonl"
    data.write_text(json.dumps({"instruction": hostile, "input": hostile, "output": hostile}, ensure_ascii=False)
                    + "\n", encoding="utf-8")
    too_short = cli("train", QUICKSTART, "--set", f"data.path={data}", "--set", f"data.persona={hostile}")
    assert too_short.returncode == 2 and "cuts off every answer" in too_short.stderr
    proc = cli("train", QUICKSTART, *quick_sets(**{"train.max_steps": 2, "data.eval_ratio": 0,
                                                  "train.save_steps": 0, "data.max_length": 1024}),
               "--set", f"model.path={model}", "--set", f"data.path={data}", "--set", f"data.persona={hostile}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert read_state(run).state == protocol.COMPLETED
    assert protocol.read_json(run / protocol.FINAL / "persona.json")["persona"] == hostile, "the persona is kept verbatim"
    # A run name with metacharacters is refused outright; chat with the payload as prompt and persona is inert.
    bad_name = cli("train", QUICKSTART, "--set", f"name={hostile}")
    assert bad_name.returncode == 2 and "name may only hold" in bad_name.stderr
    cli("chat", str(run), "--prompt", hostile, "--persona", hostile, "--max-new-tokens", "3", check=True)
    assert not marker.exists() and (tmp_path / f"{marker}.dir").is_dir()
    assert not (Path.cwd() / "x").exists() and not (Path.cwd() / "y").exists()
