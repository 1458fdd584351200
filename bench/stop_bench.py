"""How fast a run stops, and how long it sits after its last step: the full huanhuan data with a 10% eval split.

    .venv/bin/python bench/stop_bench.py [--data ../shared/data/huanhuan.json] [--ranks 1]

For each eval-set size (capped at data.max_eval_records = 200, the default, and uncapped: all 10% = 373 records,
as before the cap), two real detached runs of the starter model:
- stop: trained until step 3, then `stop` (save first); prints the seconds from the request to `stopped` with a
  complete checkpoint. Stop never evaluates, so both rows should be close.
- tail: trained to completion with train.max_steps=6; prints the seconds from the moment training ended (the
  phase left `training`) to `completed` (the end-of-training evaluation, then final/).
Each run uses a private runs folder and lock folder; figures are wall-clock on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: trainer_core importable
from bench.common import DEFAULT_DATA, data_file  # noqa: E402
from trainer_core.common.paths import PROJECT_ROOT  # noqa: E402

from trainer_core.runs import protocol  # noqa: E402
from trainer_core.config.run_config import load_config  # noqa: E402
from trainer_core.runs.orchestrate import create_run  # noqa: E402
from trainer_core.runs.lifecycle import stop  # noqa: E402
from trainer_core.runs.state import RunState, read_state  # noqa: E402
from trainer_core.runs.supervisor import start  # noqa: E402


def launch(data: Path, ranks: int, cap: int, extra: list[str]) -> Path:
    cfg = load_config(PROJECT_ROOT / "configs" / "quickstart.yaml", [
        f"data.path={data}", "data.eval_ratio=0.1", f"data.max_eval_records={cap}", "train.save_steps=1000",
        f"placement.num_ranks={ranks}", *extra])
    run = create_run(cfg)
    start(run)
    return run


def wait(run: Path, pred, timeout: float, what: str) -> RunState:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = read_state(run)
        if pred(s):
            return s
        time.sleep(0.1)
    stop(run, force=True)
    raise SystemExit(f"{run.name}: timed out waiting for {what}")


def stop_seconds(data: Path, ranks: int, cap: int) -> float:
    run = launch(data, ranks, cap, ["train.epochs=1"])
    wait(run, lambda s: s.step >= 3, 600, "step 3")
    t0 = time.time()
    s = stop(run).state
    dt = time.time() - t0
    assert s.state == protocol.STOPPED and protocol.latest_checkpoint(run), s
    return dt


def tail_seconds(data: Path, ranks: int, cap: int) -> float:
    run = launch(data, ranks, cap, ["train.max_steps=6"])
    s = wait(run, lambda s: s.phase not in (None, protocol.PHASE_TRAINING) or s.terminal, 600, "the end of training")
    t0 = time.time()
    s = wait(run, lambda s: s.terminal, 900, "completion")
    assert s.state == protocol.COMPLETED, s
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="alpaca records (default ../shared huanhuan.json)")
    p.add_argument("--ranks", type=int, default=1)
    args = p.parse_args(argv)
    data_file(args.data)
    tmp = Path(tempfile.mkdtemp(prefix="stop-bench-"))
    os.environ["TRAINER_RUNS_ROOT"] = str(tmp / "runs")
    os.environ["TRAINER_LOCK_DIR"] = str(tmp / "locks")
    print(f"data {args.data}, eval split 10%, {args.ranks} rank(s), starter model")
    print(f"{'eval records':>14} {'stop -> stopped (s)':>20} {'last step -> completed (s)':>28}")
    for cap, label in ((200, "200 (cap)"), (100_000, "all (373)")):
        print(f"{label:>14} {stop_seconds(args.data, args.ranks, cap):>20.1f} "
              f"{tail_seconds(args.data, args.ranks, cap):>28.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
