"""A persona evaluation in its own process (`eval.persona_at_end`: started by the run's supervisor once training has
completed and the run's end is recorded), with its own status in RUN/eval/status.json.

    python -m trainer_core.evaluation.background --run-dir RUN [--max-records N] [--max-new-tokens N]

It evaluates the final model and the base model exactly as `evaluate RUN --base` and the Runs page do
(`persona_eval.evaluate_run`), so its results are ordinary results in RUN/eval/. Its status (running with progress,
done, stopped, failed with the error) is the evaluation's own: the run's terminal state is never touched. It is
stopped by a request file (RUN/eval/stop, written by the Runs page's Stop) that it polls, so stopping it signals no
process.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import psutil

from trainer_core.common import atomic
from trainer_core.common.errors import UserError
from trainer_core.evaluation import persona_eval as pe

STATUS = "status.json"
STOP = "stop"
RUNNING, DONE, STOPPED, FAILED = "running", "done", "stopped", "failed"
POLL_S = 0.5
"""How often the stop request file is looked for."""


def status_path(run: Path) -> Path:
    return pe.eval_dir(run) / STATUS


def read_status(run: Path) -> dict:
    """The background evaluation's status ({} when none ever ran); a "running" status whose process is gone (killed)
    reads as failed."""
    data = atomic.read_json(status_path(run))
    if not isinstance(data, dict):
        return {}
    if data.get("state") == RUNNING and not _alive(data):
        data = data | {"state": FAILED, "error": "the evaluation process ended without recording its end"}
    return data


def _alive(data: dict) -> bool:
    try:
        return abs(psutil.Process(int(data["pid"])).create_time() - float(data["create_time"])) < 1.0
    except (KeyError, TypeError, ValueError, psutil.Error):
        return False


def running(run: Path) -> bool:
    return read_status(run).get("state") == RUNNING


def request_stop(run: Path) -> None:
    """Ask the running background evaluation to stop (honoured within a token; what it was evaluating is not
    written)."""
    path = pe.eval_dir(run) / STOP
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(time.time()))


def argv(run: Path, *, max_records: int, max_new_tokens: int) -> list[str]:
    """The command that evaluates a run in the background."""
    return [sys.executable, "-m", "trainer_core.evaluation.background", "--run-dir", str(run),
            "--max-records", str(max_records), "--max-new-tokens", str(max_new_tokens)]


def evaluate(run: Path, settings: pe.EvalSettings) -> str:
    """Evaluate the run's final model and its base model, keeping the status file current; returns the end state."""
    run = Path(run)
    pe.eval_dir(run).mkdir(parents=True, exist_ok=True)
    (pe.eval_dir(run) / STOP).unlink(missing_ok=True)
    me = psutil.Process()
    status = {"state": RUNNING, "pid": me.pid, "create_time": me.create_time(), "started": time.time(),
              "models": [pe.BASE, "final"], "label": "", "done": 0, "total": 0, "error": None}
    atomic.write_json_atomic(status_path(run), status)
    cancel = threading.Event()
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(POLL_S):
            if (pe.eval_dir(run) / STOP).exists():
                cancel.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    last = [0.0]

    def progress(label: str, done: int, total: int) -> None:
        status.update(label=label, done=done, total=total)
        if time.monotonic() - last[0] > POLL_S or done == total:
            last[0] = time.monotonic()
            atomic.write_json_atomic(status_path(run), status)

    try:
        pe.evaluate_run(run, base=True, settings=settings, cancel=cancel, progress=progress)
        status["state"] = DONE
    except pe.Cancelled:
        status["state"] = STOPPED
    except UserError as e:
        status.update(state=FAILED, error=str(e))
    except Exception as e:  # recorded as the evaluation's failure (the traceback goes to eval.log)
        traceback.print_exc()
        status.update(state=FAILED, error=f"{type(e).__name__}: {e}")
    finally:
        finished.set()
        (pe.eval_dir(run) / STOP).unlink(missing_ok=True)
    status["ended"] = time.time()
    atomic.write_json_atomic(status_path(run), status)
    return status["state"]


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--max-records", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    ns = parser.parse_args(args)
    settings = pe.EvalSettings(max_records=ns.max_records, max_new_tokens=ns.max_new_tokens)
    state = evaluate(ns.run_dir.resolve(), settings)
    print(f"[evaluate] {state}", file=sys.stderr, flush=True)
    return 0 if state in (DONE, STOPPED) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
