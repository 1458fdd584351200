"""Shared pytest fixtures (plain helper functions are in helpers.py). Model fixtures are session-scoped: each is
built once per test run."""

import os
import tempfile
from pathlib import Path

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

@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    """A private runs root for one test; the CLI subprocesses inherit it through the environment. Device locks
    go to a private folder too, so a developer's own runs on this machine cannot make a test wait or fail."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("TRAINER_RUNS_ROOT", str(root))
    monkeypatch.setenv("TRAINER_LOCK_DIR", str(tmp_path / "locks"))
    return root


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
