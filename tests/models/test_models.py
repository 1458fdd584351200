# .venv/bin/python -m pytest tests/models/test_models.py -q
"""check_model_dir: a model folder is refused, with the reason and the fix, before any run starts on it."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from trainer_core.common.errors import UserError
from trainer_core.models.local import check_model_dir

CONFIG = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}


def model_dir(tmp_path, config=CONFIG, weights=True):
    d = tmp_path / "model"
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if weights:
        save_file({"w": np.zeros((4, 4), dtype=np.float32)}, str(d / "model.safetensors"))
    return d


def refused(path, match, **kw):
    with pytest.raises(UserError, match=match) as e:
        check_model_dir(path, **kw)
    assert str(e.value).startswith(f"model.path {path}")
    return str(e.value)


def test_accepts_the_starter_model(starter_model):
    config = check_model_dir(starter_model)
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is True


def test_accepts_a_minimal_safetensors_folder(tmp_path):
    assert check_model_dir(model_dir(tmp_path)) == CONFIG


def test_missing_directory(tmp_path):
    assert "prepare-models" in refused(tmp_path / "nope", "is not a directory")


def test_a_file_is_not_a_model_directory(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    refused(f, "is not a directory")


def test_no_config_json(tmp_path):
    refused(model_dir(tmp_path, config=None), "has no config.json")


@pytest.mark.parametrize("text", ["{broken", "[1, 2]", "\"text\""])
def test_broken_config_json(tmp_path, text):
    d = model_dir(tmp_path)
    (d / "config.json").write_text(text, encoding="utf-8")
    refused(d, "config.json is broken")


def test_config_json_not_utf8(tmp_path):
    d = model_dir(tmp_path)
    (d / "config.json").write_bytes(b'{"model_type": "\xff"}')
    refused(d, "config.json is broken")


def test_no_weights(tmp_path):
    refused(model_dir(tmp_path, weights=False), r"has no weights \(\*.safetensors\)")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "consolidated.pth"])
def test_pickle_weights_only(tmp_path, name):
    d = model_dir(tmp_path, weights=False)
    (d / name).write_bytes(b"\x80\x02not really a pickle")
    assert "convert them to safetensors" in refused(d, "safetensors only").lower()


def test_bin_next_to_safetensors_is_fine(tmp_path):
    d = model_dir(tmp_path)
    (d / "pytorch_model.bin").write_bytes(b"x")
    assert check_model_dir(d) == CONFIG


def test_remote_code_needs_trust(tmp_path):
    d = model_dir(tmp_path, config={**CONFIG, "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}})
    refused(d, "trust_remote_code")
    assert check_model_dir(d, trust_remote_code=True)["auto_map"]


def test_remote_code_fixture_needs_trust(remote_code_model):
    with pytest.raises(UserError, match="trust_remote_code"):
        check_model_dir(remote_code_model)
    assert check_model_dir(remote_code_model, trust_remote_code=True)["auto_map"]


def test_truncated_weights_from_an_interrupted_download(tmp_path):
    d = model_dir(tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    refused(d, "model.safetensors is truncated")


@pytest.mark.parametrize("data", [b"", b"\x01\x02", b"\xff" * 8 + b"{}", (10).to_bytes(8, "little") + b"not json!!"])
def test_weights_that_are_not_safetensors(tmp_path, data):
    d = model_dir(tmp_path, weights=False)
    (d / "model.safetensors").write_bytes(data)
    refused(d, "not a valid safetensors file")


def test_sharded_model_with_a_missing_shard(tmp_path):
    d = model_dir(tmp_path, weights=False)
    save_file({"a": np.zeros(2, dtype=np.float32)}, str(d / "model-00001-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    refused(d, "model-00002-of-00002.safetensors; the download is incomplete")
    save_file({"b": np.zeros(2, dtype=np.float32)}, str(d / "model-00002-of-00002.safetensors"))
    assert check_model_dir(d) == CONFIG
