"""Dashboard under load: 50 runs in the history and a 1 GB train.log.

    .venv/bin/python bench/dashboard_load.py [--runs 50] [--log-gb 1]

Prints the server-side time each page takes to render (Streamlit's AppTest runs the real page scripts) and the
cost of the monitor's log tail on the 1 GB file. Several browser sessions on one live run are measured by
bench/browser_load.py against a real server.
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: trainer_core importable
from trainer_core.common.paths import PROJECT_ROOT  # noqa: E402

PAGES = ["pages/data.py", "pages/train.py", "pages/monitor.py", "pages/chat.py", "pages/runs.py"]


def make_runs(root: Path, n: int, log_gb: float) -> Path:
    from trainer_core.common import paths
    from trainer_core.runs import protocol
    from trainer_core.config.run_config import load_config, save_config

    now = time.time()
    live = None
    for i in range(n):
        run = root / f"run-{i:03d}"
        (run / protocol.CHECKPOINTS / "checkpoint-200").mkdir(parents=True)
        (run / protocol.CHECKPOINTS / "checkpoint-200" / protocol.COMPLETE_MARKER).write_text("{}")
        save_config(load_config(paths.CONFIGS_DIR / "quickstart.yaml", [f"name=run-{i:03d}"]), run / protocol.CONFIG)
        with open(run / protocol.METRICS, "w") as f:
            for s in range(1, 201):
                f.write(json.dumps({"step": s, "total_steps": 200, "loss": 12 - s * 0.02, "lr": 1e-3,
                                    "grad_norm": 1.0, "tokens_per_s": 900.0, "label_tokens_per_s": 400.0,
                                    "elapsed_s": s * 1.0, "eta_s": 200.0 - s, "peak_mem_bytes": [2**30]}) + "\n")
        (run / protocol.LOG).write_text("step ok\n" * 100, encoding="utf-8")
        protocol.write_status(run, protocol.Status(state=protocol.COMPLETED, name=run.name, step=200, total_steps=200, loss=8.0,
                                       created=now - 3600 + i, ended=now - 3000 + i))
        live = run
    # The newest run gets a 1 GB log: a sparse hole followed by real lines, as a long run's log would end.
    log = live / protocol.LOG
    with open(log, "wb") as f:
        f.truncate(int(log_gb * 2**30))
        f.seek(0, os.SEEK_END)
        f.write(b"".join(f"[trainer] step {s} loss 8.0\n".encode() for s in range(2000)))
    return live


def render_times(page: str, repeat: int = 3) -> list[float]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PROJECT_ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        at.switch_page(page).run()
        out.append(time.perf_counter() - t)
        if at.exception:
            raise RuntimeError(f"{page}: {at.exception[0].value}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--log-gb", type=float, default=1.0)
    args = ap.parse_args()
    from app.frame import leave_pages_directory_mode

    leave_pages_directory_mode()  # behave like a server that has served its first page
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TRAINER_RUNS_ROOT"] = tmp
        live = make_runs(Path(tmp), args.runs, args.log_gb)
        from trainer_core.common.tailing import tail_lines

        t = time.perf_counter()
        lines = tail_lines(live / "train.log", 200)
        tail_ms = (time.perf_counter() - t) * 1000
        print(f"runs in history: {args.runs}; newest train.log: {os.path.getsize(live / 'train.log') / 2**30:.2f} GiB")
        print(f"tail of the last 200 log lines: {tail_ms:.1f} ms ({len(lines)} lines)")
        print(f"{'page':<18} {'server-side render, median of 3 (s)':>36}")
        for page in PAGES:
            print(f"{page:<18} {statistics.median(render_times(page)):>36.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
