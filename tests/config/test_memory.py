# .venv/bin/python -m pytest tests/config/test_memory.py -q
"""The memory planner: exact parameter counts from config.json alone (no weights), model states that are DeepSpeed's
own estimates, and the orderings a user relies on when picking a ZeRO stage, offload and rank count."""

import json

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from trainer_core.config.run_config import load_config
from trainer_core.common.errors import UserError
from trainer_core.config.hardware import Gpu, Hardware
from trainer_core.config.memory import GiB, model_shape, plan_memory

H, LAYERS, HEADS, INTER, VOCAB = 4096, 32, 32, 11008, 151936
# Described hardware: no GPU exists on the test machine.
H100x4 = Hardware(gpus=[Gpu(i, "H100", 80 * GiB, (9, 0), physical=i) for i in range(4)], host_ram_bytes=1024 * GiB,
                  cpu_cores=64)
RTX24x4 = Hardware(gpus=[Gpu(i, "RTX 4090", 24 * GiB, (8, 9), physical=i) for i in range(4)],
                   host_ram_bytes=512 * GiB, cpu_cores=32)
CPU_ONLY = Hardware(gpus=[], host_ram_bytes=64 * GiB, cpu_cores=16)


@pytest.fixture(scope="module")
def qwen7b_dir(tmp_path_factory):
    """A 7B Qwen2-shaped model: config.json only, no weights at all."""
    d = tmp_path_factory.mktemp("qwen7b")
    (d / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": H, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "intermediate_size": INTER,
        "vocab_size": VOCAB, "tie_word_embeddings": False}), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def qwen7b(qwen7b_dir):
    return model_shape(qwen7b_dir)


def plan(model_dir, shape, hw, *sets):
    cfg = load_config(None, [f"model.path={model_dir}", *sets])
    return plan_memory(cfg, shape, hw)


def test_starter_params_equal_the_loaded_model(starter_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(starter_model)
    real = sum(p.numel() for p in model.parameters())  # a tied embedding is one parameter
    assert model.config.tie_word_embeddings
    cfg = load_config(None, [f"model.path={starter_model}", "deepspeed.offload_optimizer=none"])
    p = plan_memory(cfg, hw=CPU_ONLY)
    assert p.params == real
    embedding = model.config.vocab_size * model.config.hidden_size
    assert sum(p.numel() for p in model.state_dict().values()) == real + embedding  # what counting twice gives


def test_planning_in_threads_never_touches_other_threads_models(qwen7b_dir, starter_model):
    """The dashboard plans in several sessions' threads at once while chat builds real models: building on the meta
    device must stay inside the planning thread (accelerate's global patch once left later models without data)."""
    import threading

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    register = torch.nn.Module.register_parameter
    config = AutoConfig.from_pretrained(starter_model)
    stop, built = threading.Event(), []

    def plan_repeatedly():
        while not stop.is_set():
            model_shape(qwen7b_dir)

    planners = [threading.Thread(target=plan_repeatedly) for _ in range(3)]
    for th in planners:
        th.start()
    try:
        for _ in range(5):
            built.append(AutoModelForCausalLM.from_config(config))
    finally:
        stop.set()
        for th in planners:
            th.join()
    assert all(p.device.type == "cpu" for m in built for p in m.parameters())
    assert torch.nn.Module.register_parameter is register
    assert AutoModelForCausalLM.from_config(config).model.norm.weight.device.type == "cpu"


def test_7b_from_config_alone(qwen7b_dir, qwen7b):
    assert [f.name for f in qwen7b_dir.iterdir()] == ["config.json"]
    per_layer = 4 * H * H + 3 * H + 3 * H * INTER + 2 * H  # q k v o (+ q k v bias), gate up down, two norms
    assert qwen7b.params == 2 * VOCAB * H + LAYERS * per_layer + H
    assert qwen7b.largest_layer_params == VOCAB * H
    assert (qwen7b.hidden, qwen7b.layers, qwen7b.heads, qwen7b.intermediate, qwen7b.vocab) == \
        (H, LAYERS, HEADS, INTER, VOCAB)
    # plan_memory reads the shape itself from the path: still no weights needed.
    assert plan(qwen7b_dir, None, H100x4, "placement.num_ranks=4").params == qwen7b.params


def test_model_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="model.path"):
        model_shape(tmp_path)


@pytest.mark.parametrize("offload", ["none", "cpu"])
def test_zero2_model_states_are_deepspeeds_estimate(qwen7b_dir, qwen7b, offload):
    p = plan(qwen7b_dir, qwen7b, H100x4, "deepspeed.stage=2", f"deepspeed.offload_optimizer={offload}",
             "placement.num_ranks=4", "train.precision=bf16")
    _, gpu = estimate_zero2_model_states_mem_needs(qwen7b.params, num_gpus_per_node=4, num_nodes=1,
                                                   cpu_offload=offload == "cpu")
    assert p.breakdown["model_states"] == gpu
    assert p.per_rank_device_bytes == sum(p.breakdown.values())


def test_zero3_model_states_are_deepspeeds_estimate(qwen7b_dir, qwen7b):
    p = plan(qwen7b_dir, qwen7b, H100x4, "deepspeed.stage=3", "deepspeed.offload_optimizer=cpu",
             "deepspeed.offload_param=cpu", "placement.num_ranks=4")
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(qwen7b.params, qwen7b.largest_layer_params,
                                                        num_gpus_per_node=4, cpu_offload=True,
                                                        cpu_offload_params=True)
    assert p.breakdown["model_states"] == gpu
    assert p.host_bytes >= cpu


def test_more_sharding_less_memory_per_rank(qwen7b_dir, qwen7b):
    per_rank = {stage: plan(qwen7b_dir, qwen7b, H100x4, f"deepspeed.stage={stage}",
                            "deepspeed.offload_optimizer=none", "placement.num_ranks=4").per_rank_device_bytes
                for stage in (0, 1, 2, 3)}
    assert per_rank[3] < per_rank[2] < per_rank[1] < per_rank[0]


def test_more_ranks_less_memory_per_rank(qwen7b_dir, qwen7b):
    two, four = (plan(qwen7b_dir, qwen7b, H100x4, "deepspeed.stage=3", "deepspeed.offload_optimizer=none",
                      f"placement.num_ranks={n}").per_rank_device_bytes for n in (2, 4))
    assert four < two


def test_stages_0_to_2_need_the_same_host_memory_without_offload(qwen7b_dir, qwen7b):
    # Every rank loads the model on the host before ZeRO partitions it, whatever the stage.
    hosts = {plan(qwen7b_dir, qwen7b, H100x4, f"deepspeed.stage={s}", "deepspeed.offload_optimizer=none",
                  "placement.num_ranks=4").host_bytes for s in (0, 1, 2)}
    assert len(hosts) == 1 and hosts.pop() > 4 * 4 * qwen7b.params


def test_offload_moves_memory_from_device_to_host(qwen7b_dir, qwen7b):
    base = ["deepspeed.stage=3", "placement.num_ranks=4"]
    on_device = plan(qwen7b_dir, qwen7b, H100x4, *base, "deepspeed.offload_optimizer=none")
    offloaded = plan(qwen7b_dir, qwen7b, H100x4, *base, "deepspeed.offload_optimizer=cpu",
                     "deepspeed.offload_param=cpu")
    assert offloaded.per_rank_device_bytes < on_device.per_rank_device_bytes
    assert offloaded.host_bytes > on_device.host_bytes
    # ZeRO-2: optimizer offload cuts device memory; the host never needs less.
    z2 = ["deepspeed.stage=2", "placement.num_ranks=4"]
    z2_dev = plan(qwen7b_dir, qwen7b, H100x4, *z2, "deepspeed.offload_optimizer=none")
    z2_off = plan(qwen7b_dir, qwen7b, H100x4, *z2, "deepspeed.offload_optimizer=cpu")
    assert z2_off.per_rank_device_bytes < z2_dev.per_rank_device_bytes
    assert z2_off.host_bytes >= z2_dev.host_bytes


def test_tutorial_hardware_four_24gb_cards(qwen7b_dir, qwen7b):
    zero0 = plan(qwen7b_dir, qwen7b, RTX24x4, "deepspeed.stage=0", "deepspeed.offload_optimizer=none",
                 "placement.num_ranks=4")
    assert not zero0.fits and zero0.device_total_bytes == 24 * GiB
    zero3 = plan(qwen7b_dir, qwen7b, RTX24x4, "deepspeed.stage=3", "deepspeed.offload_optimizer=cpu",
                 "deepspeed.offload_param=cpu", "placement.num_ranks=4")
    assert zero3.fits and zero3.per_rank_device_bytes < 24 * GiB
    # The tutorial's own run: ZeRO-2 + CPU Adam, micro batch 1, 128 tokens, on 4 x 24 GB.
    tutorial = plan(qwen7b_dir, qwen7b, RTX24x4, "deepspeed.stage=2", "deepspeed.offload_optimizer=cpu",
                    "placement.num_ranks=4", "data.max_length=128")
    assert tutorial.fits


def test_shipped_7b_config_fits_the_tutorial_hardware(qwen7b_dir, qwen7b):
    """configs/qwen_7b_4x24gb.yaml on 4 x 24 GB (a GPU cannot exist here: the hardware is described, not detected),
    for the Qwen-7B-Chat shape and for Qwen2.5-7B (GQA, 152,064 vocabulary, untied head)."""
    from trainer_core.config.ds_config import build_ds_config, lint_run
    from trainer_core.common.paths import CONFIGS_DIR

    example = CONFIGS_DIR / "qwen_7b_4x24gb.yaml"
    q25 = qwen7b_dir.parent / "qwen25-7b"
    q25.mkdir(exist_ok=True)
    (q25 / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
        "tie_word_embeddings": False}), encoding="utf-8")
    host = Hardware(gpus=RTX24x4.gpus, host_ram_bytes=256 * GiB)
    for model_dir in (qwen7b_dir, q25):
        cfg = load_config(example, [f"model.path={model_dir}"])
        assert (cfg.train.learning_rate, cfg.placement.num_ranks, cfg.deepspeed.stage) == (1e-5, 4, 2)
        p = plan_memory(cfg, hw=host)
        assert p.fits and p.per_rank_device_bytes < 0.8 * 24 * GiB, p.breakdown  # headroom for fragmentation
        assert lint_run(cfg, build_ds_config(cfg, on_gpu=True), gpu_supports_bf16=True) == []
        # Without recomputation the same run would not leave that headroom.
        no_gc = plan_memory(load_config(example, [f"model.path={model_dir}", "train.gradient_checkpointing=false"]),
                            hw=host)
        assert no_gc.per_rank_device_bytes > p.per_rank_device_bytes


def test_host_ram_limits_the_fit(qwen7b_dir, qwen7b):
    small_host = Hardware(gpus=RTX24x4.gpus, host_ram_bytes=64 * GiB)
    p = plan(qwen7b_dir, qwen7b, small_host, "deepspeed.stage=3", "deepspeed.offload_optimizer=cpu",
             "deepspeed.offload_param=cpu", "placement.num_ranks=4")
    assert p.per_rank_device_bytes < 24 * GiB and not p.fits


def test_gradient_checkpointing_lowers_activations(qwen7b_dir, qwen7b):
    base = ["placement.num_ranks=4", "data.max_length=2048", "train.micro_batch_size=2"]
    off = plan(qwen7b_dir, qwen7b, H100x4, *base)
    on = plan(qwen7b_dir, qwen7b, H100x4, *base, "train.gradient_checkpointing=true")
    assert on.breakdown["activations"] < off.breakdown["activations"] / 4
    assert on.breakdown["model_states"] == off.breakdown["model_states"]
    assert on.per_rank_device_bytes < off.per_rank_device_bytes


def test_longer_sequences_cost_more(qwen7b_dir, qwen7b):
    short, long = (plan(qwen7b_dir, qwen7b, H100x4, "placement.num_ranks=4", f"data.max_length={n}")
                   for n in (256, 4096))
    assert long.breakdown["activations"] > short.breakdown["activations"]
    assert long.breakdown["logits"] > short.breakdown["logits"]


def test_cpu_ranks_share_the_host(qwen7b_dir, qwen7b, starter_model):
    p = plan(starter_model, None, CPU_ONLY, "placement.num_ranks=2")
    assert p.on_gpu is False and p.device_total_bytes is None
    assert p.host_bytes == 2 * p.per_rank_device_bytes and p.fits
    assert any("no GPU" in str(n) for n in p.notes)
    big = plan(qwen7b_dir, qwen7b, CPU_ONLY, "placement.num_ranks=2")
    assert not big.fits  # a 7B model does not train in 64 GB of RAM


def test_a_deepspeed_config_file_decides_the_zero_layout_of_the_plan(qwen7b_dir, qwen7b, tmp_path):
    """The form says ZeRO-2; the hand-written file that runs says ZeRO-3 with parameter offload: the plan is the
    file's (issue 16: one source of truth for ZeRO)."""
    from trainer_core.config.ds_config import build_ds_config

    four = ["placement.num_ranks=4"]
    zero3 = load_config(None, [f"model.path={qwen7b_dir}", *four, "deepspeed.stage=3", "deepspeed.offload_param=cpu"])
    file = tmp_path / "z3.json"
    file.write_text(json.dumps(build_ds_config(zero3, on_gpu=True)), encoding="utf-8")
    form = load_config(None, [f"model.path={qwen7b_dir}", *four, f"deepspeed.config_file={file}"])
    assert form.deepspeed.stage == 2
    from_file, from_form = plan_memory(form, qwen7b, H100x4), plan_memory(zero3, qwen7b, H100x4)
    assert from_file.breakdown == from_form.breakdown and from_file.host_bytes == from_form.host_bytes
    assert from_file.breakdown != plan(qwen7b_dir, qwen7b, H100x4, *four).breakdown  # the form's ZeRO-2
    # The dict a caller already holds is used as it is.
    assert plan_memory(form, qwen7b, H100x4, ds=build_ds_config(zero3)).breakdown == from_form.breakdown
    with pytest.raises(UserError, match="zero_optimization in the DeepSpeed config is not valid"):
        plan_memory(form, qwen7b, H100x4, ds={"zero_optimization": {"stage": 7}})


# ------------------------------------------------------------------ LoRA and QLoRA
# A small Qwen2 whose adapter is counted by hand: hidden 64, 2 layers, intermediate 128, vocabulary 1000, untied.
# Base: embedding and head 2 x 64,000; per layer q/k/v/o 4 x 4,096 (+ 192 q/k/v biases), gate/up/down 3 x 8,192,
# two norms 128: 41,280; two layers 82,560; final norm 64. Total 210,624; the block linears' weights 81,920.
# Rank-8 adapters on every block linear: q/k/v/o 4 x 8 x (64 + 64) = 4,096, gate/up 2 x 8 x (64 + 128) = 3,072,
# down 8 x (128 + 64) = 1,536: 8,704 per layer, 17,408 in all.
SMALL_PARAMS, SMALL_BLOCK_LINEAR, SMALL_ADAPTER = 210_624, 81_920, 17_408
RTX24x1 = Hardware(gpus=[Gpu(0, "RTX 4090", 24 * GiB, (8, 9), physical=0)], host_ram_bytes=64 * GiB, cpu_cores=16)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    (d / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 1000,
        "tie_word_embeddings": False}), encoding="utf-8")
    return d


def small_plan(small_dir, hw, *sets):
    cfg = load_config(None, [f"model.path={small_dir}", "lora.rank=8", "placement.num_ranks=1", *sets])
    return plan_memory(cfg, hw=hw)


def test_the_adapter_is_counted_from_the_shapes(small_dir):
    from trainer_core.config.sections import LoraArgs

    shape = model_shape(small_dir, lora=LoraArgs(rank=8))
    assert (shape.params, shape.adapter.trainable, shape.adapter.quantisable, shape.adapter.targets) == \
        (SMALL_PARAMS, SMALL_ADAPTER, SMALL_BLOCK_LINEAR, 14)
    assert shape.adapter.largest_trainable == 8 * (64 + 128)
    some = model_shape(small_dir, lora=LoraArgs(rank=8, target_modules=["q_proj", "v_proj"], use_dora=True))
    assert some.adapter.trainable == 2 * 2 * (8 * (64 + 64) + 64)  # DoRA adds a magnitude per output feature


def test_a_lora_plan_on_cpu_holds_the_frozen_base_and_the_adapters_states_only(small_dir):
    """fp32 on CPU: the base's 4 bytes per parameter and the measured ZeRO-2 bytes per trained parameter (5 whole +
    18 sharded) for the adapter alone; a full fine-tune's figures are not what a LoRA run shows."""
    full = small_plan(small_dir, CPU_ONLY, "deepspeed.stage=2", "deepspeed.offload_optimizer=none")
    lora = small_plan(small_dir, CPU_ONLY, "deepspeed.stage=2", "deepspeed.offload_optimizer=none",
                      "train.method=lora")
    assert lora.method == "lora" and lora.trainable == SMALL_ADAPTER and full.trainable is None
    assert lora.breakdown["frozen_base"] == 4 * SMALL_PARAMS
    assert lora.breakdown["adapter_states"] == SMALL_ADAPTER * (5 + 18)
    assert "model_states" not in lora.breakdown
    assert lora.per_rank_device_bytes == sum(lora.breakdown.values())
    assert full.breakdown["model_states"] == SMALL_PARAMS * (5 + 18)


def test_lora_and_qlora_on_one_gpu(small_dir):
    """bf16 on a 24 GB card, ZeRO-2 without offload: the base in 2 bytes (QLoRA: the block linears in 4-bit NF4
    with double quantisation's constants, the rest in fp32 as peft's kbit preparation casts it), the adapter's
    16-bit weights and gradients and fp32 optimizer states, DeepSpeed's 4 + 16 bytes per parameter on one rank."""
    sets = ("deepspeed.stage=2", "deepspeed.offload_optimizer=none")
    lora = small_plan(small_dir, RTX24x1, *sets, "train.method=lora")
    assert lora.breakdown["frozen_base"] == 2 * SMALL_PARAMS
    assert lora.breakdown["adapter_states"] == 20 * SMALL_ADAPTER
    assert [str(n) for n in lora.notes] == ["lora on GPUs: estimates, unverified until a GPU run confirms them"]
    qlora = small_plan(small_dir, RTX24x1, *sets, "train.method=qlora")
    nf4 = SMALL_BLOCK_LINEAR * 0.5 + SMALL_BLOCK_LINEAR * 0.127 / 8  # 40,960 + 1,300.48
    assert qlora.breakdown["frozen_base"] == int(nf4 + (SMALL_PARAMS - SMALL_BLOCK_LINEAR) * 4) == 557_076
    assert qlora.breakdown["adapter_states"] == 20 * SMALL_ADAPTER


def test_zero3_shards_the_frozen_base_and_the_adapter(small_dir):
    """ZeRO-3 over 2 GPUs partitions frozen weights too (one layer, the 64,000-parameter head, gathered whole)."""
    two = Hardware(gpus=RTX24x4.gpus[:2], host_ram_bytes=512 * GiB, cpu_cores=32)
    p = small_plan(small_dir, two, "placement.num_ranks=2", "deepspeed.stage=3", "deepspeed.offload_optimizer=none",
                   "deepspeed.offload_param=none", "train.method=lora")
    assert p.breakdown["frozen_base"] == int(2 * SMALL_PARAMS / 2 + 2 * 64_000)
    _, dev, _ = estimate_zero3_model_states_mem_needs(SMALL_ADAPTER, 8 * (64 + 128), num_gpus_per_node=2,
                                                      num_nodes=1, cpu_offload=False, cpu_offload_params=False,
                                                      zero_init=True, additional_buffer_factor=1.5)
    assert p.breakdown["adapter_states"] == int(dev)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_adapters_keep_their_inputs_and_low_rank_activations(small_dir, checkpointing):
    """With dropout each adapted layer keeps its dropped-out input (per layer 4 x 64 + 2 x 64 + 128 = 512 features)
    and its rank-8 output (7 x 8 = 56) for backward: 568 values a token a layer in fp32 on CPU; checkpointing keeps
    one layer's worth. The frozen embedding adds no gradient to the head's memory."""
    sets = (f"train.gradient_checkpointing={str(checkpointing).lower()}", "train.micro_batch_size=2",
            "data.max_length=32", "deepspeed.stage=2", "deepspeed.offload_optimizer=none")
    full = small_plan(small_dir, CPU_ONLY, *sets)
    lora = small_plan(small_dir, CPU_ONLY, *sets, "train.method=lora")
    layers = 1 if checkpointing else 2
    assert lora.breakdown["activations"] - full.breakdown["activations"] == layers * 2 * 32 * 568 * 4
    assert full.breakdown["logits"] - lora.breakdown["logits"] == 1000 * 64 * 4
    no_dropout = small_plan(small_dir, CPU_ONLY, *sets, "train.method=lora", "lora.dropout=0")
    assert no_dropout.breakdown["activations"] - full.breakdown["activations"] == layers * 2 * 32 * 56 * 4


def test_a_7b_lora_fits_one_24gb_card_where_the_full_fine_tune_does_not(qwen7b_dir):
    full = plan(qwen7b_dir, None, RTX24x1, "placement.num_ranks=1", "deepspeed.offload_optimizer=none")
    lora = plan(qwen7b_dir, None, RTX24x1, "placement.num_ranks=1", "train.method=lora")
    qlora = plan(qwen7b_dir, None, RTX24x1, "placement.num_ranks=1", "train.method=qlora")
    assert not full.fits and lora.fits and qlora.fits
    assert qlora.per_rank_device_bytes < lora.per_rank_device_bytes < 24 * GiB
