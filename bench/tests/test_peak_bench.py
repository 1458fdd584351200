# .venv/bin/python -m pytest bench/tests/test_peak_bench.py -q    (fast: tiny matmuls, meta-device models, one tiny build)
"""The machine's limit (bench/peak_bench.py) and the --shape presets (bench/common.py): dtypes read from the CPU's
flags, a real (tiny) peak measurement, MFU on hand-computed numbers, parameter counts of the presets, a preset built
once and reused."""

import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from trainer_core.common.paths import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT))

from bench import common  # noqa: E402
from bench.peak_bench import (cpu_flags, main, measure_peak, model_shape, recipe_mfu,  # noqa: E402
                              training_dtypes)

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {extra}\nbogomips\t: 4000\n"


@pytest.mark.parametrize("extra, dtypes", [
    ("avx512f", ["fp32"]),  # AVX-512 without its BF16 extension: torch emulates bf16, so no bf16 peak
    ("avx512f avx512_bf16", ["fp32", "bf16"]),
    ("amx_tile amx_bf16", ["fp32", "bf16"]),
])
def test_training_dtypes_follow_the_cpu_flags(extra, dtypes):
    assert training_dtypes("cpu", cpu_flags(CPUINFO.format(extra=extra))) == dtypes
    assert training_dtypes("cuda") == ["bf16", "fp16", "tf32", "fp32"]
    assert cpu_flags("no flags line") == set()


def test_a_peak_is_measured_on_random_data():
    r = measure_peak("fp32", "cpu", n=64, repeats=3, warmup=1)
    assert r["flops_per_s"] > 0 and r["best_flops_per_s"] >= r["flops_per_s"] and len(r["times_ms"]) == 3
    assert r["what"].startswith("64x64x64 fp32 torch.matmul, median of 3")


def test_an_unavailable_dtype_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--dtypes", "fp16"])  # a CPU: fp16 is no training dtype here
    assert exit_.value.code == 2 and "--dtypes: fp16 not a training dtype of this machine" in capsys.readouterr().err


def _model(tmp, tensors: dict, tie: bool):
    tmp.mkdir()
    save_file({k: torch.zeros(*v) for k, v in tensors.items()}, tmp / "model.safetensors")
    (tmp / "config.json").write_text(json.dumps({"hidden_size": 4, "num_attention_heads": 2, "num_hidden_layers": 1,
                                                 "vocab_size": 10, "tie_word_embeddings": tie}))
    return tmp


def test_matmul_parameters_count_the_head_once_and_never_the_lookup(tmp_path):
    tied = model_shape(_model(tmp_path / "tied", {"model.embed_tokens.weight": (10, 4),
                                                  "model.layers.0.mlp.up_proj.weight": (6, 4)}, True))
    assert (tied["params"], tied["non_embedding_params"], tied["matmul_params"]) == (64, 24, 24 + 40)
    untied = model_shape(_model(tmp_path / "untied", {"model.embed_tokens.weight": (10, 4), "lm_head.weight": (10, 4),
                                                      "model.layers.0.mlp.up_proj.weight": (6, 4)}, False))
    assert (untied["params"], untied["matmul_params"]) == (104, 24 + 40)


def test_mfu_by_hand():
    # 6 x 1000 params x 60 labels = 360,000; attention 12 x 2 layers x width 4 x context 5 x 60 = 28,800;
    # 388,800 FLOPs in 2 s = 194,400 FLOP/s, against a 388,800 FLOP/s peak: 50%.
    shape = {"matmul_params": 1000, "layers": 2, "attn_width": 4}
    r = recipe_mfu(shape, 5.0, 60, 2.0, 388_800.0)
    assert r == {"model_gflops_per_s": 194_400 / 1e9, "mfu": 0.5}
    assert recipe_mfu(shape, 5.0, 60, 2.0, None)["mfu"] is None


@pytest.mark.parametrize("name, millions", [("qwen2.5-0.5b", 494.0), ("qwen2.5-0.5b-6l", 225.6)])
def test_shape_presets_have_the_real_models_parameter_counts(name, millions):
    assert common.count_params(common.SHAPES[name]) / 1e6 == pytest.approx(millions, abs=0.1)


def test_a_shape_is_built_once_and_rebuilt_only_when_its_preset_changes(tmp_path, monkeypatch):
    tiny = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1}
    monkeypatch.setitem(common.SHAPES, "tiny", tiny)
    path = common.shape_model("tiny", root=tmp_path)
    assert path == tmp_path / "tiny" and (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert model_shape(path)["layers"] == 1 and [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temp left
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert common.shape_model("tiny", root=tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    monkeypatch.setitem(common.SHAPES, "tiny", {**tiny, "num_hidden_layers": 2})
    assert model_shape(common.shape_model("tiny", root=tmp_path))["layers"] == 2
    from trainer_core.common.paths import STARTER_MODEL_DIR

    assert common.shape_model("starter") == STARTER_MODEL_DIR
    with pytest.raises(SystemExit, match="--shape nope: unknown shape"):
        common.shape_model("nope")
