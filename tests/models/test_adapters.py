# .venv/bin/python -m pytest tests/models/test_adapters.py -q    (fast; the real LoRA runs are in test_lora_e2e.py)
"""LoRA beside full fine-tuning: the config, the targets found from the model, the QLoRA refusal without CUDA, the
merged export and chat from base + adapter. Adapters here are real peft ones on real models (the starter, a tiny
GPT-2 and Llama built locally); only training runs are left to the slow tests."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from helpers import cli
from trainer_core.common.errors import UserError
from trainer_core.config.run_config import RunConfig, config_from_dict, load_config, save_config
from trainer_core.config.sections import LoraArgs, ModelArgs, TrainArgs
from trainer_core.models import adapters
from trainer_core.runs import preflight
from trainer_core.runs import protocol

QUICKSTART = "configs/quickstart.yaml"
STARTER_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


# ------------------------------------------------------------------ config

def test_method_defaults_to_full_and_every_shipped_config_keeps_it():
    assert RunConfig().train.method == "full"
    for path in sorted(Path("configs").glob("*.yaml")):
        assert load_config(path).train.method == "full", path


def test_lora_section_defaults():
    la = RunConfig().lora
    assert (la.rank, la.alpha, la.dropout, la.target_modules, la.use_rslora, la.use_dora, la.modules_to_save) == \
        (16, 32.0, 0.05, [], False, False, [])


@pytest.mark.parametrize("raw,field", [
    ({"train": {"method": "qlora4"}}, "train.method"),
    ({"lora": {"rank": 0}}, "lora.rank"),
    ({"lora": {"alpha": 0}}, "lora.alpha"),
    ({"lora": {"dropout": 1.0}}, "lora.dropout"),
    ({"lora": {"target_modules": ["q_proj; rm -rf"]}}, "lora.target_modules"),
    ({"lora": {"modules_to_save": ["lm head"]}}, "lora.modules_to_save"),
    ({"lora": {"ranks": 8}}, "lora.rank"),
])
def test_bad_lora_values_are_refused_naming_the_field(raw, field):
    with pytest.raises(UserError) as e:
        config_from_dict(raw)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_target_modules_from_set_as_comma_separated_names():
    cfg = load_config(QUICKSTART, ["train.method=lora", "lora.target_modules=q_proj,v_proj", "lora.rank=8"])
    assert (cfg.train.method, cfg.lora.target_modules, cfg.lora.rank) == ("lora", ["q_proj", "v_proj"], 8)


def _sized_model(tmp_path, layers: int) -> str:
    """A Qwen2 config.json (no weights: the learning-rate lint reads only the config) of ~0.1-1B parameters."""
    from transformers import Qwen2Config

    Qwen2Config(vocab_size=151936, hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers,
                num_attention_heads=16, num_key_value_heads=16).save_pretrained(tmp_path)
    return str(tmp_path)


def test_learning_rate_lint_is_method_aware(tmp_path, starter_model):
    big = _sized_model(tmp_path, 8)  # ~0.27B parameters

    def lints(path, method, lr):
        cfg = RunConfig(model=ModelArgs(path=path), train=TrainArgs(method=method, learning_rate=lr))
        return [x.code for x in preflight.lint_learning_rate(cfg)]

    assert lints(big, "lora", 2e-4) == []
    assert lints(big, "lora", 5e-3) == ["learning-rate-lora"]
    assert lints(big, "lora", 1e-6) == ["learning-rate-lora"]
    assert lints(big, "full", 5e-3) == ["learning-rate-high"]  # full fine-tuning keeps its own limit
    assert lints(big, "full", 2e-4) == []
    assert lints(str(starter_model), "lora", 8e-3) == []  # the starter keeps its own rate


# ------------------------------------------------------------------ targets

def test_targets_are_every_linear_in_the_blocks_of_the_starter(starter_model):
    model = AutoModelForCausalLM.from_pretrained(starter_model)
    assert adapters.block_list(model) == "model.layers"
    assert adapters.target_modules(model, []) == STARTER_LINEAR
    assert adapters.target_modules(model, ["q_proj"]) == ["q_proj"]  # lora.target_modules wins


def test_targets_of_a_gpt2_are_its_conv1d_layers_not_the_head():
    """A non-Qwen architecture: GPT-2's blocks are `transformer.h` and its linear layers are Conv1D."""
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    assert adapters.block_list(model) == "transformer.h"
    assert adapters.target_modules(model, []) == ["c_attn", "c_fc", "c_proj"]
    cfg = RunConfig(train=TrainArgs(method="lora"))
    peft_model = adapters.wrap_for_training(model, cfg)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert not any("lm_head" in n or "wte" in n for n in trainable)


def test_a_leaf_name_shared_outside_the_blocks_is_named_in_full():
    """A projection outside the blocks called like one inside must not get an adapter: names go in full."""
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    model.transformer.c_proj = torch.nn.Linear(32, 32)
    targets = adapters.target_modules(model, [])
    assert "transformer.h.0.attn.c_proj" in targets and "transformer.c_proj" not in targets


@pytest.mark.parametrize("lora", [LoraArgs(), LoraArgs(rank=4, target_modules=["q_proj", "down_proj"],
                                                   use_dora=True, modules_to_save=["lm_head"])])
def test_the_planners_adapter_count_is_peft_s(starter_model, lora):
    """The memory planner counts the adapter from config.json on the meta device; peft, wrapping the loaded model,
    must train exactly that many parameters."""
    from trainer_core.config.memory import model_shape

    model = AutoModelForCausalLM.from_pretrained(starter_model)
    cfg = RunConfig(train=TrainArgs(method="lora"), lora=lora)
    trainable, _ = adapters.wrap_for_training(model, cfg).get_nb_trainable_parameters()
    assert model_shape(starter_model, lora=lora).adapter.trainable == trainable


def test_head_and_base_are_frozen_and_checkpointing_feeds_gradients_to_the_adapters(starter_model):
    model = AutoModelForCausalLM.from_pretrained(starter_model)
    cfg = RunConfig(train=TrainArgs(method="lora", gradient_checkpointing=True))
    peft_model = adapters.wrap_for_training(model, cfg)
    # As the Trainer does it: after the model is built, with transformers' default reentrant checkpointing.
    peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    assert not model.get_output_embeddings().weight.requires_grad
    peft_model.train()
    ids = torch.randint(0, 1000, (1, 16))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]  # A gets none while B is 0
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------ qlora without CUDA

def test_qlora_is_refused_in_one_line_without_cuda():
    problem = adapters.method_problem("qlora", "local", has_cuda=False, bnb_installed=True)
    assert problem.code == "models.qlora_needs_cuda" and "CUDA" in str(problem)
    assert adapters.method_problem("qlora", "local", has_cuda=True, bnb_installed=False).code == \
        "models.qlora_needs_bitsandbytes"
    assert adapters.method_problem("qlora", "local", has_cuda=True, bnb_installed=True) is None
    assert adapters.method_problem("lora", "local", has_cuda=False, bnb_installed=False) is None
    # Other nodes' GPUs cannot be seen from here: multi-node launchers are not refused.
    assert adapters.method_problem("qlora", "pdsh", has_cuda=False, bnb_installed=False) is None


@pytest.mark.parametrize("command", ["plan", "train"])
def test_plan_and_train_refuse_qlora_here_before_anything_starts(runs_root, command):
    """This machine has no CUDA GPU (as CI): the refusal is one line, exit 2, and no run directory appears."""
    proc = cli(command, QUICKSTART, "--set", "train.method=qlora", "--set", "name=q", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "qlora" in lines[0] and "CUDA" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not any(runs_root.iterdir())


def test_the_train_page_check_refuses_qlora(monkeypatch):
    """The Train page's check is orchestrate.plan (app/train_checks.py): it raises the same coded refusal before
    reading the model or the data."""
    from trainer_core.runs import orchestrate

    def no_files(cfg):
        raise AssertionError("the data was read before the method was checked")

    monkeypatch.setattr(preflight, "check_files", no_files)
    with pytest.raises(UserError) as e:
        orchestrate.plan(load_config(QUICKSTART, ["train.method=qlora"]))
    assert e.value.code == "models.qlora_needs_cuda"


# ------------------------------------------------------------------ export --merge and chat, on a real adapter

@pytest.fixture
def adapter_run(tmp_path, starter_model):
    """A run directory as a LoRA run leaves it: config.yaml, and final/ holding a peft adapter of the starter
    whose B matrices are non-zero (as after training) plus the tokenizer."""
    from transformers import AutoTokenizer

    run = tmp_path / "lora-run"
    run.mkdir()
    cfg = load_config(QUICKSTART, ["train.method=lora", "name=lora-run"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(starter_model)))
    save_config(cfg, run / protocol.CONFIG)
    torch.manual_seed(0)
    model = adapters.wrap_for_training(AutoModelForCausalLM.from_pretrained(starter_model), cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    final = run / protocol.FINAL
    model.save_pretrained(final)
    AutoTokenizer.from_pretrained(starter_model).save_pretrained(final)
    protocol.mark_complete(final, {})
    return run


def test_merged_export_equals_base_plus_adapter_and_loads_without_peft(adapter_run, starter_model):
    proc = cli("export", str(adapter_run), "--merge", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert out == adapter_run / "exports" / "final-merged" and (out / protocol.COMPLETE_MARKER).is_file()
    assert not (out / adapters.ADAPTER_CONFIG).exists() and (out / "tokenizer.json").is_file()
    assert json.loads((out / protocol.PERSONA).read_text())["persona"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys  # tied: stored once
    assert not any("lora" in k for k in keys)

    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    assert not hasattr(merged, "peft_config")
    unmerged, base_dir = adapters.load_with_adapter(adapter_run / protocol.FINAL)
    assert base_dir == Path(starter_model).resolve() or base_dir == Path(starter_model)
    ids = torch.randint(0, 151000, (2, 32))
    with torch.no_grad():
        want, got = unmerged(input_ids=ids).logits, merged(input_ids=ids).logits
        with unmerged.disable_adapter():
            base = unmerged(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-4, rtol=0)
    assert not torch.allclose(base, got, atol=1e-3), "the adapter changed nothing: the check could not fail"


def test_export_without_merge_copies_the_adapter(adapter_run):
    proc = cli("export", str(adapter_run), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert (out / adapters.ADAPTER_WEIGHTS).is_file() and (out / adapters.ADAPTER_CONFIG).is_file()
    assert not (out / "model.safetensors").exists()


def test_merge_of_a_full_run_is_refused_in_one_line(adapter_run):
    cfg = load_config(adapter_run / protocol.CONFIG, ["train.method=full"])
    save_config(cfg, adapter_run / protocol.CONFIG)
    proc = cli("export", str(adapter_run), "--merge", timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--merge applies to lora and qlora runs" in proc.stderr


def test_chat_loads_base_plus_adapter_unmerged(adapter_run):
    from peft import PeftModel

    from trainer_core.models.inference import load_chat_model

    model, tok = load_chat_model(adapter_run / protocol.FINAL)
    assert isinstance(model, PeftModel) and tok.convert_tokens_to_ids("<|im_end|>") == 151645
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert hasattr(layer, "lora_A") and not layer.merged  # the adapter is applied, not merged into the base


def test_an_adapter_whose_base_moved_is_refused_naming_it(adapter_run, tmp_path):
    config = adapter_run / protocol.FINAL / adapters.ADAPTER_CONFIG
    info = json.loads(config.read_text())
    info["base_model_name_or_path"] = str(tmp_path / "gone")
    config.write_text(json.dumps(info))
    with pytest.raises(UserError) as e:
        adapters.load_with_adapter(adapter_run / protocol.FINAL)
    assert e.value.code == "models.adapter_base_missing" and "gone" in str(e.value)
