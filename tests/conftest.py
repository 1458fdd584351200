"""Shared pytest fixtures. Model fixtures are session-scoped: each is built once per test run."""

import pytest
from transformers import AutoTokenizer

from trainer_core.starter import build_remote_code_fixture, prepare_models


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
