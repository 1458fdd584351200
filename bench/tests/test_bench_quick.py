# .venv/bin/python -m pytest bench/tests/test_bench_quick.py -q    (slow: three real deepspeed launches, about 2 minutes)
"""The training benchmark runs end to end in --quick mode and prints a table that parses. Times are not checked:
the machine is shared, and the figures are the benchmark's to report, not a test's to assert."""

import re
import subprocess
import sys

import pytest

from trainer_core.common.paths import PROJECT_ROOT

SHARED = PROJECT_ROOT.parent / "shared"  # test inputs shared between checkouts, beside the checkout

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (SHARED / "data" / "huanhuan.json").is_file(), reason="needs ../shared/data/huanhuan.json")
def test_quick_bench_prints_a_table_that_parses():
    proc = subprocess.run([sys.executable, "bench/train_bench.py", "--quick", "--phases"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| recipe |"))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    assert columns[:5] == ["recipe", "steps", "train_s", "label_tok", "label_tok/s"]
    rows = {}
    for line in lines[header + 2:header + 5]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(columns), line
        rows[cells[0]] = dict(zip(columns, cells))
    assert set(rows) == {"baseline", "ours-same", "ours"}
    for row in rows.values():
        assert int(row["steps"]) > 0 and int(row["label_tok"]) > 0
        assert float(row["train_s"]) > 0 and float(row["label_tok/s"]) > 0
        assert 0 < float(row["heldout_loss"]) < 20  # per-token cross-entropy of a 152k vocabulary starts near 11.9
        assert float(row["peak_rss_MiB"]) > 100
    ratios = [line for line in lines if " / baseline: label tokens/s " in line]
    assert len(ratios) == 2
    assert all(re.search(r"label tokens/s [0-9.]+x", line) for line in ratios)

    # --phases: bench/hooks/phase_timer hooked every recipe's rank 0 (the baseline's script and our trainer alike), and
    # forward, backward and optimizer fit inside the timed training steps (a phase counted twice, or one hooked
    # outside the step, leaves "rest of the step" negative).
    start = next(i for i, line in enumerate(lines) if line.startswith("| recipe | steps | ms/step |"))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    assert names[3:] == ["forward+loss", "backward compute", "ZeRO gradient handling", "optimizer step",
                         "rest of the step", "between steps"]
    phases = {}
    for line in lines[start + 2:start + 5]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        phases[cells[0]] = cells
    assert set(phases) == {"baseline", "ours-same", "ours"}
    for recipe, cells in phases.items():
        assert cells[1] == rows[recipe]["steps"]
        parts = [float(c) for c in cells[3:]]
        assert all(x > 0 for x in parts[:4]), cells  # forward, backward, ZeRO hooks and the optimizer all ran
        assert parts[4] >= 0 and parts[5] >= 0, cells
