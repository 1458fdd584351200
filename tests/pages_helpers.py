"""What page tests share: the dashboard entry, page switching, widget texts and a run directory
written by hand as the trainer and supervisor leave it (the page fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
from streamlit.testing.v1 import AppTest

from trainer_core.common import paths
from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.config.run_config import load_config, save_config
from trainer_core.runs import protocol

APP = str(PROJECT_ROOT / "streamlit_app.py")


PAGES = ["pages/data.py", "pages/train.py", "pages/monitor.py", "pages/chat.py", "pages/runs.py"]


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


def make_run(root: Path, name: str, state: str, *, steps: int = 8, error: str | None = None, final: bool = False,
             log: list[str] = (), alive: bool = False) -> Path:
    """A run directory as the trainer and supervisor leave it (or, with alive=True, as a live run looks)."""
    run = root / name
    (run / protocol.CHECKPOINTS).mkdir(parents=True)
    cfg = load_config(paths.CONFIGS_DIR / "quickstart.yaml", [f"name={name}", "train.epochs=1"])
    save_config(cfg, run / protocol.CONFIG)
    t0 = time.time() - 60
    with open(run / protocol.METRICS, "w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "total_steps": 10, "loss": 12 - s * 0.3, "eval_loss": None, "lr": 1e-3,
                                "grad_norm": 1.1, "tokens_per_s": 500.0, "label_tokens_per_s": 250.0,
                                "elapsed_s": s * 2.0, "eta_s": 10.0, "peak_mem_bytes": [2**30]}) + "\n")
        f.write(json.dumps({"step": steps, "total_steps": 10, "loss": None, "eval_loss": 11.5}) + "\n")
    with open(run / protocol.RESOURCES, "w") as f:
        for i in range(5):
            f.write(json.dumps({"time": t0 + 2 * i, "ranks": [{"pid": 1, "rank": 0, "rss_bytes": 2**30}],
                                "host_used_bytes": 8 * 2**30, "host_total_bytes": 16 * 2**30}) + "\n")
    (run / protocol.LOG).write_text("\n".join(["step 1 ok", *log]) + "\n", encoding="utf-8")
    ckpt = run / protocol.CHECKPOINTS / f"checkpoint-{steps}"
    ckpt.mkdir()
    (ckpt / protocol.COMPLETE_MARKER).write_text("{}")
    if final:
        (run / protocol.FINAL).mkdir()
        for f in paths.STARTER_MODEL_DIR.iterdir():
            (run / protocol.FINAL / f.name).symlink_to(f)
        (run / protocol.FINAL / "persona.json").write_text(json.dumps({"persona": "你是华妃"}), encoding="utf-8")
        (run / protocol.FINAL / protocol.COMPLETE_MARKER).write_text("{}")
    status = {"state": state, "created": t0, "ended": t0 + 50, "name": name, "step": steps, "total_steps": 10,
              "loss": 12 - steps * 0.3, "eval_loss": 11.5, "eta_s": 4.0, "error": error}
    if alive:  # this test process stands in for the supervisor: alive, with the start time recorded
        me = psutil.Process()
        protocol.write_json_atomic(run / protocol.MANIFEST, {"pid": me.pid, "pgid": os.getpgid(me.pid),
                                                 "create_time": me.create_time(), "started": t0})
    protocol.write_json_atomic(run / protocol.STATUS, status)
    return run

