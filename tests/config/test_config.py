# .venv/bin/python -m pytest tests/config/test_config.py -q
"""The run config: defaults, the shipped quickstart, help text for every field, and one-line errors that name the
dotted field for every kind of bad input (values, keys, types, files, --set overrides)."""

import dataclasses

import pytest

from trainer_core.config.run_config import (SECTIONS, RunConfig, apply_overrides, config_from_dict, field_help, load_config,
                                 save_config)
from trainer_core.common.errors import UserError

QUICKSTART = "configs/quickstart.yaml"


def error_of(overrides: list[str]) -> str:
    with pytest.raises(UserError) as e:
        load_config(None, overrides)
    return str(e.value)


def test_defaults_are_valid():
    cfg = load_config(None)
    assert cfg == RunConfig() == config_from_dict({}) == config_from_dict(None)
    assert (cfg.deepspeed.stage, cfg.deepspeed.offload_optimizer, cfg.deepspeed.offload_param) == (2, "cpu", "none")
    assert cfg.model.trust_remote_code is False
    assert cfg.world_size == 1


def test_quickstart_loads():
    cfg = load_config(QUICKSTART)
    assert cfg.model.path == "models/qwen2-starter"
    assert cfg.data.path == "data/sample_zhenhuan.jsonl"
    assert (cfg.data.max_length, cfg.data.eval_ratio) == (256, 0.1)
    assert (cfg.train.learning_rate, cfg.train.micro_batch_size, cfg.train.epochs) == (0.008, 4, 3.0)
    assert (cfg.deepspeed.stage, cfg.deepspeed.offload_optimizer) == (2, "cpu")
    assert cfg.placement.num_ranks == 1


ALL_FIELDS = [(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def test_sections_are_all_found():
    assert set(SECTIONS) == {"model", "data", "train", "lora", "deepspeed", "placement", "eval"}
    assert len(ALL_FIELDS) > 30


@pytest.mark.parametrize("section,name", ALL_FIELDS, ids=[f"{s}.{n}" for s, n in ALL_FIELDS])
def test_every_field_has_help(section, name):
    assert len(field_help(section, name).strip()) > 10


def test_field_help_reads_the_docstring_under_the_field():
    assert field_help("train", "learning_rate") == "Peak learning rate of AdamW."
    assert field_help("train", "no_such_field") == ""


BAD_VALUES = [
    (["train.learning_rate=-1"], "train.learning_rate", "-1"),
    (["deepspeed.stage=4"], "deepspeed.stage", "4"),
    (["data.max_length=0"], "data.max_length", "0"),
    (["data.eval_ratio=0.7"], "data.eval_ratio", "0.7"),
    (["deepspeed.stage=2", "deepspeed.offload_param=cpu"], "deepspeed.offload_param", "stage 3"),
    (["deepspeed.offload_optimizer=nvme"], "deepspeed.nvme_path", "nvme"),
    (["placement.gpus=0,1"], "placement.gpus", "placement.num_ranks is 1"),
    (["placement.gpus=0,1,2", "placement.num_ranks=2"], "placement.gpus", "3 ids"),
    (["placement.master_port=80"], "placement.master_port", "80"),
    (["placement.master_port=70000"], "placement.master_port", "70000"),
    (["placement.num_nodes=2"], "placement.num_nodes", "local"),
    (["placement.launcher=pdsh"], "placement.hostfile", "pdsh"),
    (["name=../x"], "name", "'../x'"),
    (["name=$(touch /tmp/pwned)"], "name", "$(touch /tmp/pwned)"),
    (["train.epochs=inf"], "train.epochs", "finite"),
    (["train.max_grad_norm=nan"], "train.max_grad_norm", "finite"),
    (["placement.master_addr=-oProxyCommand"], "placement.master_addr", "-oProxyCommand"),
]


@pytest.mark.parametrize("overrides,field,detail", BAD_VALUES, ids=[" ".join(o) for o, _, _ in BAD_VALUES])
def test_bad_values_name_the_dotted_field(overrides, field, detail):
    msg = error_of(overrides)
    assert msg.startswith(field + " "), msg
    assert detail in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", ["../x", "$(touch /tmp/pwned)", "ok\n", "a/b", ".hidden", "a" * 65, "x y"])
def test_run_names_that_are_not_a_plain_directory_name_are_refused(name):
    with pytest.raises(UserError, match=r"^name "):
        config_from_dict({"name": name})


def test_good_run_names_pass():
    for name in ("run-1", "a", "Qwen2.5_sft", "a" * 64):
        assert config_from_dict({"name": name}).name == name


def test_unknown_key_suggests_the_real_field():
    with pytest.raises(UserError, match=r"unknown config key 'train\.lr' \(did you mean train\.learning_rate\?\)"):
        load_config(None, ["train.lr=1e-5"])
    with pytest.raises(UserError, match=r"did you mean train\.micro_batch_size\?"):
        config_from_dict({"train": {"micro_batch_sise": 2}})
    with pytest.raises(UserError, match=r"unknown config key 'trian' \(did you mean train\?\)"):
        config_from_dict({"trian": {}})


def test_unknown_key_without_a_close_match_lists_the_known_ones():
    with pytest.raises(UserError) as e:
        config_from_dict({"deepspeed": {"zzzzzz": 1}})
    assert "deepspeed.stage" in str(e.value) and "deepspeed.offload_param" in str(e.value)


@pytest.mark.parametrize("raw,field,expect", [
    ({"train": {"epochs": "three"}}, "train.epochs", "number"),
    ({"train": {"gradient_checkpointing": "yes"}}, "train.gradient_checkpointing", "true or false"),
    ({"train": {"epochs": True}}, "train.epochs", "number"),
    ({"train": {"micro_batch_size": 2.5}}, "train.micro_batch_size", "whole number"),
    ({"placement": {"gpus": [0, True]}}, "placement.gpus[1]", "whole number"),
    ({"placement": {"gpus": {"a": 1}}}, "placement.gpus", "list"),
    ({"data": {"persona": ["a"]}}, "data.persona", "text"),
    ({"model": {"path": None}}, "model.path", "text"),
    ({"train": 3}, "train", "mapping"),
])
def test_wrong_types_name_the_field(raw, field, expect):
    with pytest.raises(UserError) as e:
        config_from_dict(raw)
    assert str(e.value).startswith(field + " ") and expect in str(e.value)


def test_numbers_written_as_text_are_accepted():
    cfg = config_from_dict({"train": {"learning_rate": "1e-4", "epochs": 2, "micro_batch_size": "4"}})
    assert (cfg.train.learning_rate, cfg.train.epochs, cfg.train.micro_batch_size) == (1e-4, 2.0, 4)
    assert isinstance(cfg.train.epochs, float)


def test_yaml_that_is_a_list_is_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("- model\n- data\n", encoding="utf-8")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(f)


def test_yaml_that_does_not_parse_is_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {epochs: 1\n", encoding="utf-8")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(f)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(UserError, match="nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")


def test_set_overrides_apply_with_their_field_types():
    cfg = load_config(QUICKSTART, ["train.learning_rate=2e-5", "placement.gpus=0,1", "placement.num_ranks=2",
                                   "data.persona=123"])
    assert cfg.train.learning_rate == 2e-5
    assert cfg.placement.gpus == [0, 1] and cfg.placement.num_ranks == 2
    assert cfg.data.persona == "123" and isinstance(cfg.data.persona, str)
    assert cfg.data.max_length == 256  # the rest of the file is kept


def test_set_text_fields_keep_exactly_what_was_typed():
    cfg = load_config(None, ["data.persona=yes: a = b # c", "name=2024", "model.path=~/m"])
    assert cfg.data.persona == "yes: a = b # c"
    assert cfg.name == "2024"
    assert cfg.model.path == "~/m"
    assert load_config(None, ["name=yes"]).name == "yes"


def test_set_into_an_empty_section_of_the_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\nplacement:\n", encoding="utf-8")
    assert load_config(f, ["placement.num_ranks=2"]).placement.num_ranks == 2


def test_apply_overrides_returns_a_copy():
    raw = {"train": {"epochs": 1}}
    out = apply_overrides(raw, ["train.epochs=2", "deepspeed.stage=3"])
    assert out == {"train": {"epochs": 2}, "deepspeed": {"stage": 3}}
    assert raw == {"train": {"epochs": 1}}


@pytest.mark.parametrize("item,expect", [
    ("train.learning_rate", "key=value"),
    ("=3", "no key"),
    ("train.a.b=1", "too deep"),
])
def test_malformed_set_is_refused(item, expect):
    assert expect in error_of([item])


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, [
        "name=round-trip", "data.persona=123", "train.learning_rate=2e-5", "train.epochs=1.5",
        "deepspeed.stage=3", "deepspeed.offload_param=nvme", "deepspeed.nvme_path=/nvme",
        "placement.num_ranks=2", "placement.gpus=1,3", "train.gradient_checkpointing=true",
    ])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, persona='你是"甄嬛"\nyes: no'))
    f = tmp_path / "config.yaml"
    save_config(cfg, f)
    back = load_config(f)
    assert back == cfg
    assert back.data.persona == '你是"甄嬛"\nyes: no'
    assert "甄嬛" in f.read_text(encoding="utf-8")  # stored readable, not escaped
    assert back != RunConfig()


def test_the_eval_section_is_off_by_default_and_names_a_bad_field():
    assert RunConfig().eval.persona_at_end is False
    cfg = config_from_dict({"eval": {"persona_at_end": True, "max_records": 20}})
    assert (cfg.eval.persona_at_end, cfg.eval.max_records, cfg.eval.max_new_tokens) == (True, 20, 128)
    with pytest.raises(UserError, match=r"eval\.max_records must be between 1 and 10,000 \(got 0\)"):
        config_from_dict({"eval": {"max_records": 0}})
    with pytest.raises(UserError, match=r"eval\.persona_at_end must be true or false"):
        config_from_dict({"eval": {"persona_at_end": "maybe"}})
