"""Shared pytest fixtures. Model fixtures are session-scoped: each is built once per test run."""

import os
import tempfile

import pytest
from transformers import AutoTokenizer

# Device locks are machine-wide: a run a developer (or a benchmark) has going on this machine would make every test
# run refused. The tests lock in a folder of their own; test_device_locks checks the machine-wide default.
os.environ.setdefault("TRAINER_LOCK_DIR", tempfile.mkdtemp(prefix="test-device-locks-"))

from trainer_core.models.starter import build_remote_code_fixture, prepare_models


@pytest.fixture(scope="session")
def starter_model():
    """Directory of the starter Qwen2 model (built into models/ on first use, reused afterwards)."""
    return prepare_models()


@pytest.fixture(scope="session")
def starter_tokenizer(starter_model):
    return AutoTokenizer.from_pretrained(starter_model)


@pytest.fixture(scope="session")
def remote_code_model(tmp_path_factory):
    """Directory of TinyQwen, the Qwen-7B-Chat-style model that needs trust_remote_code=True."""
    return build_remote_code_fixture(tmp_path_factory.mktemp("tinyqwen"))


# ------------------------------------------------------------------ real runs (slow tests)

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    """A private runs root for one test; the CLI subprocesses inherit it through the environment. Device locks
    go to a private folder too, so a developer's own runs on this machine cannot make a test wait or fail."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("TRAINER_RUNS_ROOT", str(root))
    monkeypatch.setenv("TRAINER_LOCK_DIR", str(tmp_path / "locks"))
    return root


CPU_LOCK = f"{__import__('socket').gethostname()}-cpu"


def run_pids(run: Path) -> list[int]:
    """Every living process of a run (its supervisor's process group), from its manifest."""
    from trainer_core.runs import protocol as rd
    from trainer_core.runs.processes import members

    return [p.pid for p in members(rd.read_json(run / rd.MANIFEST) or {})]


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
    proc = subprocess.run([sys.executable, "-m", "trainer_core", *args], cwd=ROOT, capture_output=True,
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
    import time

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


SHM_BUFFERS = "deepspeed_allreduce_buffer_*"


@pytest.fixture(autouse=True)
def no_leaked_shm_buffers():
    """Every run any test starts, however it ends, must leave /dev/shm as it found it: DeepSpeed's CPU all-reduce
    buffers are 66 MB per rank, and leaking them once per run filled this machine's RAM (train.release_shm_workspace)."""
    shm = Path("/dev/shm")
    before = set(shm.glob(SHM_BUFFERS))
    yield
    leaked = sorted(p.name for p in set(shm.glob(SHM_BUFFERS)) - before)
    assert not leaked, f"runs left shared-memory buffers behind: {leaked}"
