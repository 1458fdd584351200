"""Shared pytest fixtures (plain helper functions are in helpers.py). Model fixtures are session-scoped: each is
built once per test run."""

import os
import tempfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from transformers import AutoTokenizer

# Device locks are machine-wide: a run a developer (or a benchmark) has going on this machine would make every test
# run refused. The tests lock in a folder of their own; test_device_locks checks the machine-wide default.
os.environ.setdefault("TRAINER_LOCK_DIR", tempfile.mkdtemp(prefix="test-device-locks-"))

from trainer_core.models.starter import build_remote_code_fixture, prepare_models
from trainer_core.common import paths

from helpers import warm_pages_manager
from pages_helpers import APP


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


# ------------------------------------------------------------------ dashboard pages (AppTest)

@pytest.fixture
def uploads(tmp_path, monkeypatch):
    folder = tmp_path / "uploads"
    monkeypatch.setattr(paths, "UPLOADS_DIR", folder)
    return folder


@pytest.fixture
def warm_server(monkeypatch):
    """Every AppTest run behaves like a request to a server that has served its first page (helpers.py says why);
    test_a_page_asked_for_first_still_gets_the_frame covers the brand-new case."""
    warm_pages_manager(monkeypatch)


@pytest.fixture
def app(runs_root, uploads, starter_model, warm_server, monkeypatch):
    """A fresh dashboard session (Chinese, the default) with an empty runs folder. The Train page waits for its
    background checks however long they take under load, so its plan is there after one run (test_app_second_pass
    checks the page when they outlast the wait)."""
    from app import form_draft, train_checks

    monkeypatch.setattr(train_checks, "WAIT_S", 120.0)
    monkeypatch.setattr(form_draft, "FOLDER", runs_root.parent / "form_drafts")  # each tab's draft, per test
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    return at

