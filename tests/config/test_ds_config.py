# .venv/bin/python -m pytest tests/config/test_ds_config.py -q
"""DeepSpeed JSON: every shipped preset loads, lints clean and is exactly what the builder makes for its run config;
the linter catches the tutorial's mistakes and broken batch arithmetic without flagging good configs."""

import json

import pytest

from trainer_core.config.run_config import load_config
from trainer_core.config.ds_config import (ZeroLayout, build_ds_config, lint_ds_config, lint_run,
                                          list_presets, load_preset, zero_layout)
from trainer_core.common.errors import UserError

# The run config each preset was generated from.
PRESETS = {
    "zero0": ["deepspeed.stage=0", "deepspeed.offload_optimizer=none"],
    "zero1": ["deepspeed.stage=1", "deepspeed.offload_optimizer=none"],
    "zero2": ["deepspeed.stage=2", "deepspeed.offload_optimizer=none"],
    "zero2_offload": ["deepspeed.stage=2", "deepspeed.offload_optimizer=cpu"],
    "zero3": ["deepspeed.stage=3", "deepspeed.offload_optimizer=none"],
    "zero3_offload": ["deepspeed.stage=3", "deepspeed.offload_optimizer=cpu", "deepspeed.offload_param=cpu"],
}

# The tutorial's hand-written ds_config.json (../shared/reference/seed.md), as a dict: ZeRO-2 with offload_param.
SEED_DS_CONFIG = {
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"last_batch_iteration": -1, "total_num_steps": "auto",
                                                      "warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                      "warmup_num_steps": "auto"}},
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                          "offload_param": {"device": "cpu", "pin_memory": True}, "allgather_partitions": True,
                          "allgather_bucket_size": 5e8, "overlap_comm": True, "reduce_scatter": True,
                          "reduce_bucket_size": 5e8, "contiguous_gradients": True},
    "activation_checkpointing": {"partition_activations": False, "cpu_checkpointing": False,
                                 "contiguous_memory_optimization": False, "number_checkpoints": None,
                                 "synchronize_checkpoint_boundary": False, "profile": False},
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "steps_per_print": 2000,
    "train_batch_size": "auto",
    "min_lr": 5e-7,
    "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False,
}


def codes(lints, level=None):
    return [x.code for x in lints if level is None or x.level == level]


def test_every_preset_is_covered_here():
    assert set(list_presets()) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_preset_loads_lints_clean_and_equals_the_builder(name):
    preset = load_preset(name)
    assert preset == json.loads(list_presets()[name].read_text(encoding="utf-8"))
    # No false positives: 4 bf16 GPUs, the run config's own batch values.
    assert lint_ds_config(preset, world_size=4, micro_batch=1, grad_accum=1, precision="auto",
                          gpu_supports_bf16=True) == []
    cfg = load_config(None, PRESETS[name])
    assert preset == build_ds_config(cfg, on_gpu=True)


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_preset_leaves_trainer_owned_values_on_auto(name):
    preset = load_preset(name)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert preset[key] == "auto"
    assert preset["bf16"]["enabled"] == "auto" and preset["fp16"]["enabled"] == "auto"


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="zero9"):
        load_preset("zero9")


def test_tutorial_config_offloads_params_on_stage_2():
    lints = lint_ds_config(SEED_DS_CONFIG, world_size=4)
    assert codes(lints, "error") == ["offload-param-stage"]
    assert "zero_optimization.offload_param needs zero_optimization.stage 3 (got stage 2)" in str(lints[0].message)


def test_offload_device_none_is_not_an_offload():
    ds = {"zero_optimization": {"stage": 2, "offload_param": {"device": "none"},
                                "offload_optimizer": {"device": "none"}}}
    assert lint_ds_config(ds, world_size=2) == []
    # ...and so it does not excuse ZeRO on one rank either.
    assert codes(lint_ds_config(ds, world_size=1)) == ["zero-single-rank"]


def test_fp16_on_a_bf16_gpu_is_flagged():
    ds = {"fp16": {"enabled": True}, "zero_optimization": {"stage": 2}}
    assert codes(lint_ds_config(ds, world_size=2, gpu_supports_bf16=True)) == ["fp16-on-bf16-gpu"]
    assert lint_ds_config(ds, world_size=2, gpu_supports_bf16=False) == []
    auto = {"fp16": {"enabled": "auto"}, "bf16": {"enabled": "auto"}}
    assert codes(lint_ds_config(auto, world_size=1, precision="fp16", gpu_supports_bf16=True)) == ["fp16-on-bf16-gpu"]
    assert lint_ds_config(auto, world_size=1, precision="bf16", gpu_supports_bf16=True) == []


def test_fp16_and_bf16_both_on_and_precision_disabled():
    assert "fp16-and-bf16" in codes(lint_ds_config({"fp16": {"enabled": True}, "bf16": {"enabled": True}},
                                                   world_size=1), "error")
    assert codes(lint_ds_config({"bf16": {"enabled": False}}, world_size=1, precision="bf16")) == \
        ["precision-disabled"]


def test_zero3_without_16bit_gather_on_save():
    ds = {"zero_optimization": {"stage": 3}}
    assert codes(lint_ds_config(ds, world_size=2)) == ["zero3-save-gather"]
    for key in ("stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save",
                "stage3_gather_fp16_weights_on_model_save"):
        assert lint_ds_config({"zero_optimization": {"stage": 3, key: True}}, world_size=2) == [], key
    assert codes(lint_ds_config({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save":
                                                       False}}, world_size=2)) == ["zero3-save-gather"]


def test_device_map_with_zero3():
    ds = load_preset("zero3")
    assert codes(lint_ds_config(ds, world_size=2, device_map={"": 0})) == ["zero3-device-map"]
    assert codes(lint_ds_config(ds, world_size=2, device_map="auto")) == ["zero3-device-map"]
    assert lint_ds_config(ds, world_size=2, device_map=None) == []
    assert lint_ds_config(load_preset("zero2"), world_size=2, device_map={"": 0}) == []


def test_batch_arithmetic_names_the_right_total():
    ds = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1}
    lints = lint_ds_config(ds, world_size=2)
    assert codes(lints, "error") == ["batch-arithmetic"]
    assert "= 4" in str(lints[0].message)
    assert lint_ds_config({**ds, "train_batch_size": 4}, world_size=2) == []
    # Values left on "auto" in the JSON come from the run config.
    assert codes(lint_ds_config({"train_batch_size": 8, "train_micro_batch_size_per_gpu": "auto",
                                 "gradient_accumulation_steps": "auto"}, world_size=2, micro_batch=2,
                                grad_accum=1)) == ["batch-arithmetic"]
    assert lint_ds_config({"train_batch_size": 8}, world_size=2, micro_batch=2, grad_accum=2) == []
    # Only the micro batch known: the total must at least divide evenly.
    assert codes(lint_ds_config({"train_batch_size": 6, "train_micro_batch_size_per_gpu": 4}, world_size=1)) == \
        ["batch-arithmetic"]


@pytest.mark.parametrize("key,value", [
    ("train_micro_batch_size_per_gpu", 0),
    ("gradient_accumulation_steps", -1),
    ("train_batch_size", 0),
    ("train_batch_size", "8"),
    ("train_micro_batch_size_per_gpu", 1.5),
    ("gradient_accumulation_steps", True),
])
def test_non_positive_or_non_integer_batch_values(key, value):
    lints = lint_ds_config({key: value}, world_size=1)
    assert "batch-value" in codes(lints, "error")
    assert key in str(lints[codes(lints).index("batch-value")].message)


def test_lint_run_uses_the_run_config_world_size():
    cfg = load_config(None, ["placement.num_ranks=2", "train.micro_batch_size=2", "train.gradient_accumulation=1"])
    ds = {**build_ds_config(cfg), "train_batch_size": 8}
    assert codes(lint_run(cfg, ds), "error") == ["batch-arithmetic"]
    assert codes(lint_run(cfg, {**ds, "train_batch_size": 4}), "error") == []


def test_zero_on_one_rank_without_offload_is_a_warning_only():
    one = load_config(None, ["deepspeed.offload_optimizer=none"])
    assert [(x.level, x.code) for x in lint_run(one, build_ds_config(one))] == [("warning", "zero-single-rank")]
    offload = load_config(None, ["deepspeed.offload_optimizer=cpu"])
    assert lint_run(offload, build_ds_config(offload)) == []


def test_hand_written_oddities_do_not_crash_the_linter():
    ds = {"fp16": None, "bf16": [], "zero_optimization": None}
    assert lint_ds_config(ds, world_size=2, precision="fp16", gpu_supports_bf16=True) == []


def test_stage3_builder_gathers_weights_on_save():
    ds = build_ds_config(load_config(None, ["deepspeed.stage=3"]))
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_offload_blocks_are_not_pinned_on_a_cpu_host():
    cfg = load_config(None, ["deepspeed.stage=3", "deepspeed.offload_optimizer=cpu", "deepspeed.offload_param=cpu"])
    cpu = build_ds_config(cfg, on_gpu=False)["zero_optimization"]
    gpu = build_ds_config(cfg, on_gpu=True)["zero_optimization"]
    assert cpu["offload_optimizer"] == cpu["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert gpu["offload_optimizer"] == gpu["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert cpu["overlap_comm"] is False and gpu["overlap_comm"] is True


def test_offload_needs_deepspeeds_own_optimizer():
    assert build_ds_config(load_config(None, ["deepspeed.offload_optimizer=cpu"]))["optimizer"]["type"] == "AdamW"
    assert "optimizer" not in build_ds_config(load_config(None, ["deepspeed.offload_optimizer=none"]))


def test_nvme_offload_carries_its_path():
    cfg = load_config(None, ["deepspeed.stage=3", "deepspeed.offload_param=nvme", "deepspeed.nvme_path=/nvme"])
    assert build_ds_config(cfg)["zero_optimization"]["offload_param"] == \
        {"device": "nvme", "pin_memory": False, "nvme_path": "/nvme"}


def test_config_file_replaces_the_builder(tmp_path):
    f = tmp_path / "ds.json"
    f.write_text(json.dumps(SEED_DS_CONFIG), encoding="utf-8")
    assert build_ds_config(load_config(None, [f"deepspeed.config_file={f}"])) == SEED_DS_CONFIG
    with pytest.raises(UserError, match="deepspeed.config_file .*not found"):
        build_ds_config(load_config(None, [f"deepspeed.config_file={tmp_path / 'none.json'}"]))
    f.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(UserError, match="JSON object"):
        build_ds_config(load_config(None, [f"deepspeed.config_file={f}"]))
    f.write_text("{", encoding="utf-8")
    with pytest.raises(UserError, match="not valid JSON"):
        build_ds_config(load_config(None, [f"deepspeed.config_file={f}"]))


def test_zero_layout_reads_the_dict_that_runs():
    assert zero_layout(load_preset("zero3_offload")) == ZeroLayout(3, "cpu", "cpu", reduce_bucket_size=None,
                                                                   prefetch_bucket_size=None, overlap_comm=True)
    assert zero_layout(load_preset("zero2")) == ZeroLayout(2, "none", "none", reduce_bucket_size=None,
                                                           overlap_comm=True)
    assert zero_layout({}) == ZeroLayout(0, "none", "none")  # DeepSpeed's defaults
    assert zero_layout(SEED_DS_CONFIG).reduce_bucket_size == 500_000_000  # 5e8, a float in the JSON
    nvme = zero_layout({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                              "offload_param": {"device": "nvme", "nvme_path": "/scratch"}}})
    assert (nvme.offload_param, nvme.nvme_path) == ("nvme", "/scratch")
    assert zero_layout({"zero_optimization": {"stage": 3, "offload_param": {"device": "NVMe"}}}).offload_param == "nvme"
    for bad in ({"stage": 4}, {"stage": True}, {"stage": 2, "offload_optimizer": {"device": "disk"}}):
        with pytest.raises(UserError, match="not valid"):
            zero_layout({"zero_optimization": bad})


@pytest.mark.parametrize("stage,offload_optimizer,offload_param,problem", [
    (2, "none", "cpu", "config.offload_param_stage"),
    (0, "cpu", "none", "config.offload_optimizer_stage"),
])
def test_the_stage_offload_rule_is_one_rule_for_the_form_and_a_deepspeed_file(stage, offload_optimizer, offload_param,
                                                                             problem):
    """The form's fields and a hand-written file's zero_optimization block are refused by the same rule, with the
    same coded message naming each one's own fields."""
    from trainer_core.config.sections import DeepSpeedArgs

    with pytest.raises(UserError) as form:
        DeepSpeedArgs(stage=stage, offload_optimizer=offload_optimizer, offload_param=offload_param)
    block = {"stage": stage, "offload_optimizer": {"device": offload_optimizer},
             "offload_param": {"device": offload_param}}
    (lint,) = [x for x in lint_ds_config({"zero_optimization": block}, world_size=2) if x.level == "error"]
    assert form.value.code == lint.message.code == problem
    assert str(form.value).startswith("deepspeed.offload_") and str(lint.message).startswith("zero_optimization.")
