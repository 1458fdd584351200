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
