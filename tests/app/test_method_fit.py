# .venv/bin/python -m pytest tests/app/test_method_fit.py -q
"""The Train page's "which methods fit": full, lora and qlora planned side by side for the checked plan's model and
hardware. GPUs are described (none exists here)."""

import json
from types import SimpleNamespace

from app import method_fit
from app.i18n import ZH
from pages_helpers import goto, texts
from trainer_core.config.ds_config import build_ds_config
from trainer_core.config.hardware import Gpu, Hardware
from trainer_core.config.memory import GiB
from trainer_core.config.run_config import load_config

RTX24 = Hardware(gpus=[Gpu(0, "RTX 4090", 24 * GiB, (8, 9), physical=0)], host_ram_bytes=64 * GiB, cpu_cores=16)
CPU_ONLY = Hardware(gpus=[], host_ram_bytes=64 * GiB, cpu_cores=16)


def checked(tmp_path, hw, *sets):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
        "tie_word_embeddings": False}), encoding="utf-8")  # Qwen2.5-7B's shape, no weights
    cfg = load_config(None, [f"model.path={tmp_path}", "placement.num_ranks=1", "data.max_length=256", *sets])
    return SimpleNamespace(cfg=cfg, hardware=hw, ds_config=build_ds_config(cfg, on_gpu=hw.has_gpu))


def test_a_7b_on_one_24gb_card_fits_with_adapters_only(tmp_path):
    fits = {f.method: f.plan for f in method_fit.method_fits(checked(tmp_path, RTX24, "deepspeed.offload_optimizer=none"))}
    assert not fits["full"].fits and fits["lora"].fits and fits["qlora"].fits
    assert fits["qlora"].per_rank_device_bytes < fits["lora"].per_rank_device_bytes < 24 * GiB
    assert fits["lora"].trainable == 40_370_176  # Qwen2.5-7B, rank 16 on every block linear (peft's count)


def test_without_cuda_qlora_is_named_as_needing_it(tmp_path):
    lines = method_fit.fit_lines(checked(tmp_path, CPU_ONLY))
    assert len(lines) == 3 and lines[2] == ZH["fit.needs_cuda"].format(method="QLoRA")


def test_the_train_page_shows_which_methods_fit(app):
    goto(app, "pages/train.py")
    shown = " ".join(texts(app, "markdown"))
    assert "qwen2-starter" in shown and ZH["fit.needs_cuda"].format(method="QLoRA") in shown
