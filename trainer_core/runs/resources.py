"""The run's resource sampler: every few seconds one row in resources.jsonl with each rank's resident memory, the
host's, and on GPUs the run's devices (used/total memory, utilisation) and each rank's own GPU memory.

GPUs are asked through NVML by the run's machine ids, which are CUDA's numbering for the ranks: they run with
CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML's order (config.hardware). An NVML call that fails (a MIG instance has no
utilisation, a driver hiccup, a GPU that fell off the bus) loses that one figure: the error is reported once, in the
log and in the row where it first happened, and sampling goes on, host memory included.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from trainer_core.runs import protocol

RANK_MODULE = "trainer_core.training.train"


class _Nvml:
    """NVML calls that never raise: a failure returns None and is reported once per call and error."""

    def __init__(self, warn: Callable[[str], None]):
        self.warn = warn
        self.seen: set[str] = set()
        self.new: list[str] = []
        self.lib = None

    def start(self) -> bool:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as e:  # no driver, no pynvml: no GPU figures
            self._report("nvmlInit", e)
            return False
        self.lib = pynvml
        return True

    def call(self, name: str, *args) -> Any:
        try:
            return getattr(self.lib, name)(*args)
        except Exception as e:  # NVMLError and anything a broken binding raises: that figure is lost, not the rest
            self._report(name, e)
            return None

    def _report(self, name: str, e: Exception) -> None:
        message = f"NVML {name} failed: {type(e).__name__}: {e}"
        if message not in self.seen:
            self.seen.add(message)
            self.new.append(message)
            self.warn(f"resource sampler: {message}; that figure is left out from now on, the rest is still sampled")

    def take_new(self) -> list[str]:
        out, self.new = self.new, []
        return out


def _ranks(root_pid: int) -> list[dict[str, Any]]:
    try:
        procs = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    ranks = []
    for p in procs:
        try:
            cmd = " ".join(p.cmdline())
            if RANK_MODULE not in cmd or "deepspeed.launcher" in cmd:
                continue
            try:
                env_rank = p.environ().get("RANK")
            except psutil.Error:
                env_rank = None
            ranks.append({"pid": p.pid, "rank": int(env_rank) if env_rank else None,
                          "rss_bytes": p.memory_info().rss})
        except psutil.Error:
            continue
    return sorted(ranks, key=lambda r: (r["rank"] is None, r["rank"]))


def _gpus(nvml: _Nvml, gpu_ids: list[int] | None, ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's GPUs by machine id (None: every GPU NVML reports), and each rank's GPU memory into its row."""
    if gpu_ids is None:
        count = nvml.call("nvmlDeviceGetCount")
        gpu_ids = list(range(count or 0))
    by_pid = {r["pid"]: r for r in ranks}
    out = []
    for i in gpu_ids:
        h = nvml.call("nvmlDeviceGetHandleByIndex", i)
        if h is None:
            continue
        row: dict[str, Any] = {"index": i}
        mem = nvml.call("nvmlDeviceGetMemoryInfo", h)
        if mem is not None:
            row.update(used_bytes=int(mem.used), total_bytes=int(mem.total))
        util = nvml.call("nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            row["util_pct"] = int(util.gpu)
        run_bytes = 0
        for proc in nvml.call("nvmlDeviceGetComputeRunningProcesses", h) or []:
            rank = by_pid.get(getattr(proc, "pid", None))
            used = getattr(proc, "usedGpuMemory", None)
            if rank is not None and isinstance(used, int):  # None where the driver may not tell (some containers)
                rank["gpu_bytes"] = rank.get("gpu_bytes", 0) + used
                rank.setdefault("gpus", []).append(i)
                run_bytes += used
        row["run_used_bytes"] = run_bytes
        out.append(row)
    return out


def sample_resources(run: Path, root_pid: int, stop: threading.Event, every_s: float,
                     gpu_ids: list[int] | None = None, warn: Callable[[str], None] = lambda line: None) -> None:
    """Append memory samples of every process of the run (and its GPUs through NVML) until `stop` is set.
    `gpu_ids`: the run's GPUs by machine id ([] for CPU ranks; None: every GPU NVML reports). `warn` gets each
    NVML failure once, as a line for the run's log."""
    nvml = _Nvml(warn)
    on_gpu = gpu_ids is None or bool(gpu_ids)
    nvml_ok = on_gpu and nvml.start()
    if on_gpu and not nvml_ok and gpu_ids is None:
        nvml.take_new()  # no driver on a machine not said to have GPUs: CPU-only sampling, nothing to report
    with open(run / protocol.RESOURCES, "a", encoding="utf-8") as out:
        while not stop.is_set():
            row: dict[str, Any] = {"time": time.time()}
            ranks = _ranks(root_pid)
            vm = psutil.virtual_memory()
            row["ranks"] = ranks
            row["host_used_bytes"] = vm.total - vm.available
            row["host_total_bytes"] = vm.total
            if nvml_ok:
                row["gpus"] = _gpus(nvml, gpu_ids, ranks)
            if problems := nvml.take_new():
                row["nvml_errors"] = problems  # once each: a reader of the file sees why a figure is missing
            if ranks or nvml_ok or "nvml_errors" in row:
                try:
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                except OSError:
                    pass  # disk full: sampling is lost, the run's outcome is still recorded
            stop.wait(every_s)
