# .venv/bin/python -m pytest tests/runs/test_resource_sampler.py -q
"""NVML fault test: the resource sampler keeps sampling when NVML calls fail, reports each failure once, samples only
the run's GPUs and attributes GPU memory to the run's ranks.

NVML cannot exist on the test machine (no NVIDIA driver): a fake `pynvml` module stands in for it, answering for two
GPUs and failing some calls the way a MIG instance (no utilisation) and a flaky driver do. The rank is a real child
process; memory, files and the thread are real.
"""

import json
import os
import subprocess
import sys
import threading
import time
import types

import pytest

from trainer_core.runs.supervisor import sample_resources


class NVMLError(Exception):
    pass


def fake_pynvml(rank_pid: int) -> types.ModuleType:
    """Two GPUs; utilisation is Not Supported (as on MIG); the second memory query of GPU 1 fails once; the rank
    uses 3 GiB of GPU 1."""
    calls = {"mem": 0}
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    m.nvmlInit = lambda: None
    m.nvmlDeviceGetCount = lambda: 2
    m.nvmlDeviceGetHandleByIndex = lambda i: i

    def memory(h):
        if h == 1:
            calls["mem"] += 1
            if calls["mem"] == 2:
                raise NVMLError("Unknown Error")
        return types.SimpleNamespace(used=(5 + h) * 2**30, total=80 * 2**30)

    def util(h):
        raise NVMLError("Not Supported")

    m.nvmlDeviceGetMemoryInfo = memory
    m.nvmlDeviceGetUtilizationRates = util
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: (
        [types.SimpleNamespace(pid=rank_pid, usedGpuMemory=3 * 2**30)] if h == 1 else [])
    return m


@pytest.fixture
def rank():
    """A process that looks like a rank to the sampler (its command line names the training module)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "trainer_core.training.train"])
    yield proc
    proc.kill()
    proc.wait()


def sample(tmp_path, monkeypatch, rank, **kwargs) -> list[dict]:
    """Run the sampler (every 50 ms) until it has written 6 rows or 10 s passed; the rows."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(rank.pid))
    out = tmp_path / "resources.jsonl"
    stop = threading.Event()
    # The root is this test process: the rank is its child.
    th = threading.Thread(target=sample_resources, args=(tmp_path, os.getpid(), stop, 0.05), kwargs=kwargs,
                          daemon=True)
    th.start()
    deadline = time.time() + 10
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 6):
        time.sleep(0.05)
    stop.set()
    th.join(5)
    return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []


def test_sampling_survives_failing_nvml_calls(tmp_path, monkeypatch, rank):
    """As the supervisor called it before it knew the run's GPUs: every GPU NVML reports."""
    rows = sample(tmp_path, monkeypatch, rank)
    assert len(rows) >= 6, rows  # it used to end at the first failing call, before writing any row
    assert all(r["host_used_bytes"] > 0 and r["ranks"] for r in rows)
    errors = [e for r in rows for e in r.get("nvml_errors", [])]
    assert len(errors) == 2 and len(set(errors)) == 2, errors  # each failure once, not once per sample
    assert {g["index"] for g in rows[-1]["gpus"]} == {0, 1}


def test_only_the_runs_gpus_with_each_ranks_share_and_errors_in_the_log_once(tmp_path, monkeypatch, rank):
    warned: list[str] = []
    rows = sample(tmp_path, monkeypatch, rank, gpu_ids=[1], warn=warned.append)
    assert len(rows) >= 6, rows  # it used to end at the first failing call, before writing any row
    assert all(r["host_used_bytes"] > 0 for r in rows)
    errors = [e for r in rows for e in r.get("nvml_errors", [])]
    assert sorted(errors) == sorted(set(errors)) and len(errors) == 2, errors  # each failure once
    assert any("nvmlDeviceGetUtilizationRates" in e and "Not Supported" in e for e in errors)
    assert any("nvmlDeviceGetMemoryInfo" in e for e in errors)
    assert len(warned) == 2 and all(w.startswith("resource sampler: NVML") for w in warned)
    # Only the run's GPU (machine id 1), with the rank's own share of it.
    assert {g["index"] for r in rows for g in r["gpus"]} == {1}
    with_rank = [r for r in rows if any(x["pid"] == rank.pid for x in r["ranks"])]
    assert with_rank
    for r in with_rank:
        mine = next(x for x in r["ranks"] if x["pid"] == rank.pid)
        assert mine["gpu_bytes"] == 3 * 2**30 and mine["gpus"] == [1]
        assert r["gpus"][0]["run_used_bytes"] == 3 * 2**30
    # The Monitor's chart takes the rows as they are: the sample whose memory query failed has no point.
    from app.monitor_view import resource_frames

    dev, _, on_gpu = resource_frames(rows)
    assert on_gpu and 0 < len(dev) < len(rows) + 1


def test_a_cpu_run_asks_nvml_nothing(tmp_path, monkeypatch, rank):
    warned: list[str] = []
    rows = sample(tmp_path, monkeypatch, rank, gpu_ids=[], warn=warned.append)
    assert rows and not warned and all("gpus" not in r for r in rows)
