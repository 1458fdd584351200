"""Helpers the tests share (plain functions; the pytest fixtures are in conftest.py).

    from helpers import cli, quick_sets, wait_for
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.runs import launch

free_port = launch.free_port  # one free_port, the launcher's, for tests and runs alike
SHARED = PROJECT_ROOT.parent / "shared"  # test inputs shared between checkouts; always reached beside the checkout

CPU_LOCK = f"{socket.gethostname()}-cpu"


def warm_pages_manager(monkeypatch) -> None:
    """Make every Streamlit run in this test behave like a request to a server that has served its first page.

    A Streamlit server next to a `pages/` folder treats requests as old-style multipage runs until the entry script
    has called `st.navigation` once (app.frame.leave_pages_directory_mode says more). AppTest starts each run as a
    brand-new server, so without this every page run would go through `require_frame()`'s extra rerun, which drops
    button clicks.
    """
    from streamlit.runtime.pages_manager import PagesManager

    from app.frame import leave_pages_directory_mode

    init = PagesManager.__init__

    def warm_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        leave_pages_directory_mode()

    monkeypatch.setattr(PagesManager, "__init__", warm_init)


def run_pids(run: Path) -> list[int]:
    """Every living process of a run (its supervisor's process group), from its manifest."""
    from trainer_core.runs import protocol
    from trainer_core.runs.processes import members

    return [p.pid for p in members(run, protocol.read_json(run / protocol.MANIFEST) or {})]


def rank_pids(run: Path) -> list[int]:
    """The run's rank processes (trainer_core.training.train), without DeepSpeed's runner and launch."""
    import psutil

    out = []
    for pid in run_pids(run):
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if "-m trainer_core.training.train" in cmd and "deepspeed.launcher" not in cmd:
            out.append(pid)
    return out


def cli(*args: str, timeout: float = 900, check: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m trainer_core ARGS` as a real process from the project root."""
    proc = subprocess.run([sys.executable, "-m", "trainer_core", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def quick_sets(**overrides) -> list[str]:
    """--set arguments for a short quickstart run."""
    sets = {"train.epochs": 1, "train.save_steps": 5, "data.eval_ratio": 0.1}
    sets.update(overrides)
    out = []
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def wait_for(pred, timeout: float, what: str, interval: float = 0.2):
    """Poll `pred` until it returns something truthy (returned), or fail naming what never happened."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := pred():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def detach(*sets: str, config: str = "configs/quickstart.yaml") -> Path:
    """`train CONFIG --detach`: the run directory, once the supervisor has started."""
    proc = cli("train", config, "--detach", *sets, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])
