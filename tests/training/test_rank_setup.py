# .venv/bin/python -m pytest tests/training/test_rank_setup.py -q
"""What each rank decides about its host side before training: the dtype the weights load in and the attention
that packed rows get. No GPU exists here: the GPU (its compute capability) and the flash_attn package are given to
the decision as plain values, i.e. simulated; the model classes and weights are the real starter's."""

import dataclasses

import pytest
import torch

from trainer_core.config.run_config import RunConfig
from trainer_core.data.batching import Collator
from trainer_core.training.train import FLASH, load_dtype, load_model, packed_attention, supports_flash_attention


def with_model(path, trust_remote_code=False) -> RunConfig:
    cfg = RunConfig()
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(path),
                                                              trust_remote_code=trust_remote_code))


def test_weights_load_in_the_training_dtype(starter_model):
    assert [load_dtype(p) for p in ("bf16", "fp16", "fp32")] == [torch.bfloat16, torch.float16, torch.float32]
    model = load_model(with_model(starter_model), "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


AMPERE, TURING = (8, 0), (7, 5)


@pytest.mark.parametrize("packed,precision,capability,installed,supported,want", [
    (True, "bf16", AMPERE, True, True, FLASH),
    (True, "fp16", (9, 0), True, True, FLASH),
    (False, "bf16", AMPERE, True, True, None),  # unpacked rows keep the model's default
    (True, "fp32", AMPERE, True, True, None),  # flash_attn has no fp32 kernel
    (True, "fp16", TURING, True, True, None),  # flash_attn 2 needs Ampere or newer
    (True, "bf16", None, True, True, None),  # no CUDA GPU
    (True, "bf16", AMPERE, False, True, None),  # flash_attn not installed
    (True, "bf16", AMPERE, True, False, None),  # the model class lacks it
])
def test_packed_rows_get_flash_attention_only_where_it_runs(packed, precision, capability, installed, supported,
                                                            want):
    assert packed_attention(packed, precision, capability, installed, supported) == want


def test_which_models_implement_flash_attention(starter_model, remote_code_model):
    assert supports_flash_attention(with_model(starter_model))
    assert not supports_flash_attention(with_model(remote_code_model, trust_remote_code=True))


def test_flattened_batch_is_one_row_without_padding():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 2]},
            {"input_ids": [8, 9], "labels": [-100, 9], "position_ids": [0, 1]}]
    batch = Collator(pad_token_id=0, packed=True, flatten=True)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert "attention_mask" not in batch
