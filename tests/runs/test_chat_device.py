# .venv/bin/python -m pytest tests/runs/test_chat_device.py -q
"""Chat device-choice test: chat beside training loads on a GPU no live run holds (read from the real device locks),
refuses naming the runs when every GPU is held, says which device it uses, and gives the memory of models it no
longer shows back.

No GPU exists on the test machine: the GPUs are simulated through `hardware.cuda_devices`, and
`torch.cuda.empty_cache` is observed rather than run. The device locks are real flocks in a private folder.
"""

import gc
import os
import weakref

import pytest
import torch

from tests.helpers import cli
from trainer_core.config import hardware
from trainer_core.config.memory import GiB
from trainer_core.common.errors import UserError
from trainer_core.models import inference
from trainer_core.runs import chat_device, device_locks

A100 = ("NVIDIA A100-SXM4-80GB", 80 * GiB, (8, 0))


@pytest.fixture
def two_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAINER_LOCK_DIR", str(tmp_path / "locks"))
    for key in (hardware.VISIBLE_ENV, *hardware.SLURM_GPU_ENVS):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(hardware, "cuda_devices", lambda: [A100, A100])
    monkeypatch.setattr(hardware, "nvidia_driver", lambda: True)


def hold(run, machine_id: int) -> list[int]:
    """A live run's lock on a machine GPU, as the supervisor takes it."""
    run.mkdir(exist_ok=True)
    return device_locks.acquire(run, device_locks.device_keys(1, [machine_id], True))


def test_chat_takes_a_gpu_no_run_holds_and_refuses_when_all_are_held(two_gpus, tmp_path):
    assert chat_device.choose().device == "cuda:0"
    first = hold(tmp_path / "run-a", 0)
    try:
        chosen = chat_device.choose()
        assert chosen.device == "cuda:1" and chosen.gpu.lock_id == 1
        assert "cuda:1" in str(chosen.describe()) and "bf16" in str(chosen.describe())
        second = hold(tmp_path / "run-b", 1)
        try:
            with pytest.raises(UserError) as e:
                chat_device.choose()
            assert e.value.code == "runs.chat_all_gpus_busy"
            assert "run-a" in str(e.value) and "run-b" in str(e.value)
        finally:
            for fd in second:
                os.close(fd)
        assert chat_device.choose().device == "cuda:1"  # the run ended: its GPU is free again
    finally:
        for fd in first:
            os.close(fd)


def test_chat_reads_the_locks_by_machine_ids(two_gpus, tmp_path, monkeypatch):
    """Under CUDA_VISIBLE_DEVICES=2,3 a run on machine GPU 2 holds this process's cuda:0."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    fds = hold(tmp_path / "run-a", 2)
    try:
        assert chat_device.choose().device == "cuda:1"
    finally:
        for fd in fds:
            os.close(fd)


def test_cpu_machine_chats_on_the_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "cuda_devices", lambda: [])
    monkeypatch.setattr(hardware, "nvidia_driver", lambda: False)
    assert chat_device.choose().device == "cpu"


def test_models_no_longer_shown_are_released(starter_model, monkeypatch):
    """Compare mode off or another model picked: the model is dropped, collected and the CUDA cache emptied
    (observed: no GPU here), before another loads."""
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    inference.release_chat_models()
    emptied.clear()
    a = inference.chat_model(starter_model, stamp=1.0)
    b = inference.chat_model(starter_model, stamp=2.0)  # the folder re-written: a second model
    assert inference.chat_model(starter_model, stamp=2.0) is b
    gone = weakref.ref(a[0])
    del a
    assert inference.release_chat_models({(str(starter_model), False, "cpu")}) == 0  # still shown: kept
    assert inference.release_chat_models({("another-model", False, "cpu")}) == 2
    gc.collect()
    assert gone() is None and emptied and inference.held_chat_models() == []
    # Loading beyond the limit releases the least recently used first.
    emptied.clear()
    for stamp in (1.0, 2.0, 3.0):
        inference.chat_model(starter_model, stamp=stamp)
    assert [k[3] for k in inference.held_chat_models()] == [2.0, 3.0] and emptied
    inference.release_chat_models()


def test_cli_chat_says_its_device_on_stderr(starter_model):
    proc = cli("chat", str(starter_model), "--prompt", "你好", "--max-new-tokens", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "device: CPU" in proc.stderr
