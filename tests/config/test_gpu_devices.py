# .venv/bin/python -m pytest tests/config/test_gpu_devices.py -q
"""Device-mapping tests: which GPUs a run names, to DeepSpeed's launcher, to the device locks, to the planner and to
the precision decision, under CUDA_VISIBLE_DEVICES, Slurm, UUIDs and MIG.

No GPU exists on the test machine: every GPU here is simulated at torch's CUDA queries (`torch.cuda.is_available`,
`device_count`, `get_device_properties`: what CUDA would show this process under the CUDA_VISIBLE_DEVICES the test
sets), and the NVIDIA driver through `hardware.nvidia_driver`. Everything past that is the real code: detection,
preflight, the launcher argv, the run directory and its device locks.
"""

import json
import os
import types

import pytest
import torch

from trainer_core.config import hardware
from trainer_core.config.hardware import Gpu, Hardware
from trainer_core.config.memory import GiB
from trainer_core.config.run_config import load_config
from trainer_core.common.errors import UserError
from trainer_core.runs import device_locks, orchestrate, supervisor

A100 = ("NVIDIA A100-SXM4-80GB", 80 * GiB, (8, 0))
V100 = ("Tesla V100-SXM2-16GB", 16 * GiB, (7, 0))
L4 = ("NVIDIA L4", 24 * GiB, (8, 9))


@pytest.fixture
def gpus(monkeypatch, runs_root):
    """Simulate the GPUs CUDA shows this process (a list of (name, bytes, capability)) on a machine with a driver.
    CUDA_VISIBLE_DEVICES and Slurm's variables start unset."""
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        monkeypatch.delenv(key, raising=False)
    shown: list = []

    def props(i):
        name, total, (major, minor) = shown[i]
        return types.SimpleNamespace(name=name, total_memory=total, major=major, minor=minor)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(shown))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(shown))
    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    monkeypatch.setattr(hardware, "nvidia_driver", lambda: True, raising=False)
    monkeypatch.setattr(hardware, "nvml_uuids", lambda: [], raising=False)
    return shown


def quick(*sets):
    return load_config("configs/quickstart.yaml", ["train.epochs=1", *sets])


def include_of(plan) -> str:
    argv = plan.argv[0]
    return argv[argv.index("--include") + 1]


def test_visible_devices_name_the_machine_gpus_to_deepspeed_and_the_locks(gpus, monkeypatch):
    """CUDA_VISIBLE_DEVICES=2,3 with two ranks trains on machine GPUs 2 and 3 (it used to be 0 and 1: DeepSpeed's
    runner drops the variable when given --include and reads the ids as the machine's)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    gpus += [A100, A100]
    assert include_of(orchestrate.plan(quick("placement.num_ranks=2"), memory=False)) == "localhost:2,3"
    assert [(g.index, g.physical) for g in hardware.detect().gpus] == [(0, 2), (1, 3)]
    # placement.gpus counts within the visible GPUs, as cuda:<i> does.
    assert include_of(orchestrate.plan(quick("placement.num_ranks=1", "placement.gpus=1"), memory=False)) == \
        "localhost:3"
    run = orchestrate.create_run(quick("placement.num_ranks=2"))
    assert "localhost:2,3" in json.loads((run / "command.json").read_text())["argv"][0]
    keys = supervisor.device_keys(run)
    assert [k.rsplit("-", 1)[1] for k in keys] == ["gpu2", "gpu3"]


def test_a_run_on_other_visible_devices_sees_the_lock_of_the_same_gpu(gpus, monkeypatch, tmp_path):
    """Two dashboards with different CUDA_VISIBLE_DEVICES mean the same GPU by the same lock: a run holding machine
    GPU 3 refuses a second run whose placement.gpus=0 under CUDA_VISIBLE_DEVICES=3."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    gpus += [L4, L4]
    first = orchestrate.create_run(quick("placement.num_ranks=1", "placement.gpus=1"))
    held = device_locks.acquire(first, supervisor.device_keys(first))
    try:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
        del gpus[1:]
        second = orchestrate.create_run(quick("placement.num_ranks=1"))
        with pytest.raises(UserError) as e:
            device_locks.acquire(second, supervisor.device_keys(second))
        assert e.value.code == "runs.device_busy" and "gpu3" in str(e.value) and str(first) in str(e.value)
    finally:
        for fd in held:
            os.close(fd)


def test_placement_beyond_the_visible_gpus_is_refused_naming_the_variable(gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    gpus += [A100, A100]
    with pytest.raises(UserError) as e:
        orchestrate.plan(quick("placement.num_ranks=1", "placement.gpus=2"), memory=False)
    assert e.value.code == "runs.gpus_missing_visible" and "CUDA_VISIBLE_DEVICES=2,3" in str(e.value)


def test_slurm_renumbered_gpus_lock_by_slurms_ids(gpus, monkeypatch):
    """Inside a Slurm job's cgroup CUDA_VISIBLE_DEVICES counts from 0 again; --include takes those ids (the
    launcher sees the cgroup's GPUs), the locks take Slurm's, so two jobs' "GPU 0" do not collide."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("SLURM_STEP_GPUS", "4,5")
    gpus += [A100, A100]
    assert include_of(orchestrate.plan(quick("placement.num_ranks=2"), memory=False)) == "localhost:0,1"
    run = orchestrate.create_run(quick("placement.num_ranks=2"))
    assert [k.rsplit("-", 1)[1] for k in supervisor.device_keys(run)] == ["gpu4", "gpu5"]


def test_uuids_map_through_nvml_or_are_refused(gpus, monkeypatch):
    uuids = ["GPU-aaaa-0000", "GPU-bbbb-1111", "GPU-cccc-2222"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-cccc,GPU-aaaa-0000")
    gpus += [A100, A100]
    monkeypatch.setattr(hardware, "nvml_uuids", lambda: uuids)  # NVML simulated: no driver here
    assert include_of(orchestrate.plan(quick("placement.num_ranks=2"), memory=False)) == "localhost:2,0"
    monkeypatch.setattr(hardware, "nvml_uuids", lambda: [])
    with pytest.raises(UserError) as e:
        orchestrate.plan(quick("placement.num_ranks=2"), memory=False)
    assert e.value.code == "runs.gpu_unusable" and "GPU indices" in str(e.value)


def test_mig_instances_are_refused_clearly(gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-4f2e7c6a-1b3d-5e8f-9a0b-c1d2e3f4a5b6")
    gpus.append(("NVIDIA A100-SXM4-40GB MIG 1g.5gb", 5 * GiB, (8, 0)))
    with pytest.raises(UserError) as e:
        orchestrate.plan(quick("placement.num_ranks=1"), memory=False)
    assert e.value.code == "runs.gpu_unusable" and "MIG" in str(e.value)


def test_a_driver_without_a_usable_gpu_is_said_loudly(gpus, monkeypatch):
    """A GPU machine whose torch sees no GPU (here: the CPU build this machine has) would train on CPU ranks; the
    plan refuses that, unless CUDA_VISIBLE_DEVICES= hides the GPUs on purpose."""
    with pytest.raises(UserError) as e:
        orchestrate.plan(quick("placement.num_ranks=1"), memory=False)
    assert e.value.code == "runs.gpu_unusable" and "scripts/setup_env.sh" in str(e.value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "--num_gpus" in orchestrate.plan(quick("placement.num_ranks=1"), memory=False).argv[0]


def test_auto_precision_and_the_planner_use_the_selected_gpus(gpus):
    """A V100 (no native bf16) beside an A100: auto is bf16 on the A100 alone, fp16 on both; the plan's device
    memory is the selected GPU's, not the smallest of the machine's."""
    gpus += [V100, A100]
    hw = hardware.detect()
    assert hardware.resolve_precision("auto", hardware.run_gpus(hw, quick("placement.gpus=1").placement)) == "bf16"
    assert hardware.resolve_precision("auto", hardware.run_gpus(hw, quick("placement.num_ranks=2").placement)) == \
        "fp16"
    plan = orchestrate.plan(quick("placement.num_ranks=1", "placement.gpus=1"))
    assert plan.memory.device_total_bytes == 80 * GiB


def test_bf16_is_native_only():
    """V100 and T4 report bf16 through emulation in torch.cuda.is_bf16_supported(); the decision is capability."""
    assert not Gpu(0, "Tesla T4", 16 * GiB, (7, 5)).bf16 and not Gpu(0, "V100", 16 * GiB, (7, 0)).bf16
    assert Gpu(0, "A100", 80 * GiB, (8, 0)).bf16
    assert hardware.resolve_precision("auto", []) == "fp32"


@pytest.mark.parametrize("ds_precision, refused", [("fp16", True), ("bf16", False)])
def test_a_config_file_precision_against_auto_is_refused_before_launch(gpus, tmp_path, ds_precision, refused):
    """auto resolves to bf16 on an A100; a hand-written config_file with fp16 on would make the HF Trainer raise
    when the ranks start: the plan refuses it instead."""
    gpus.append(A100)
    ds = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
          "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
          ds_precision: {"enabled": True}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds), encoding="utf-8")
    cfg = quick("placement.num_ranks=1", f"deepspeed.config_file={path}")
    if refused:
        with pytest.raises(UserError) as e:
            orchestrate.plan(cfg, memory=False)
        assert "precision-contradicts" in str(e.value)
    else:
        orchestrate.plan(cfg, memory=False)


def test_planner_counts_context_nccl_and_buckets(gpus):
    gpus += [A100, A100]
    p = orchestrate.plan(quick("placement.num_ranks=2")).memory
    assert p.breakdown["cuda_context"] > 0 and p.breakdown["nccl"] > 0 and p.breakdown["zero_buffers"] > 0
    assert p.per_rank_device_bytes == sum(p.breakdown.values())


def test_offload_param_alone_keeps_optimizer_states_on_the_gpus():
    """ZeRO-3 with offload_param but not offload_optimizer: DeepSpeed's estimator ignores the parameter offload
    there; the plan moves only the 16-bit parameters to the host."""
    from trainer_core.config.memory import ModelShape, plan_memory

    shape = ModelShape(params=7_000_000_000, largest_layer_params=600_000_000, hidden=4096, layers=32, heads=32,
                       intermediate=11008, vocab=151936)
    hw = Hardware(gpus=[Gpu(i, "A100", 80 * GiB, (8, 0), physical=i) for i in range(4)], host_ram_bytes=1024 * GiB)

    def plan(*sets):
        return plan_memory(quick("placement.num_ranks=4", "deepspeed.stage=3", *sets), shape, hw)

    none, param_only = plan("deepspeed.offload_optimizer=none"), plan("deepspeed.offload_optimizer=none",
                                                                      "deepspeed.offload_param=cpu")
    both = plan("deepspeed.offload_optimizer=cpu", "deepspeed.offload_param=cpu")
    assert both.breakdown["model_states"] < param_only.breakdown["model_states"] < none.breakdown["model_states"]
    assert param_only.host_bytes > none.host_bytes
