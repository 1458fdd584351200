# .venv/bin/python -m pytest tests/cli/test_plan_all_problems.py -q
"""`plan` reports every invalid field of a config in one pass (issue 31), and warns about an empty persona."""

from helpers import cli

QUICKSTART = "configs/quickstart.yaml"
FIVE = {"train.learning_rate": "5", "train.epochs": "-1", "data.max_length": "1", "train.seed": "-3",
        "train.micro_batch_size": "0"}


def test_plan_names_five_invalid_fields_at_once_one_line_each(runs_root):
    sets = [a for k, v in FIVE.items() for a in ("--set", f"{k}={v}")]
    proc = cli("plan", QUICKSTART, *sets)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert len(lines) == 5 and all(line.startswith("error: ") for line in lines), lines
    assert sorted(line.split()[1] for line in lines) == sorted(FIVE), lines
    assert list(runs_root.iterdir()) == []


def test_plan_warns_about_an_empty_persona(runs_root):
    proc = cli("plan", QUICKSTART, "--set", "data.persona=")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data.persona is empty" in proc.stdout and "[persona-empty]" in proc.stdout


def test_busy_devices_are_in_the_plan_and_the_refusal_gives_no_gpu_advice_without_a_gpu(runs_root):
    """A real device lock held by another run, as a running run holds it; this machine has no GPU."""
    import os

    from helpers import CPU_LOCK
    from trainer_core.runs import device_locks

    fds = device_locks.acquire(runs_root / "other-run", [CPU_LOCK])
    try:
        planned = cli("plan", QUICKSTART)
        refused = cli("train", QUICKSTART, "--detach")
    finally:
        for fd in fds:
            os.close(fd)
    assert planned.returncode == 0 and "busy: " in planned.stdout and "other-run" in planned.stdout
    assert refused.returncode == 2 and "other-run" in refused.stderr, refused.stderr
    assert "placement.gpus" not in refused.stderr + planned.stdout
    assert list(runs_root.iterdir()) == []
