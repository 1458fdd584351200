"""What this machine has: accelerators, their memory and compute capability, host RAM. Cheap; safe without a GPU.

GPU ids. `placement.gpus` and a process's `cuda:<i>` count within the GPUs CUDA shows this process, i.e. within
CUDA_VISIBLE_DEVICES (which Slurm sets to a job's allocation). DeepSpeed's launcher does not: given `--include` it
deletes CUDA_VISIBLE_DEVICES and reads the ids as the machine's own (deepspeed/launcher/runner.py `main`), then sets
CUDA_VISIBLE_DEVICES to them for the ranks (launcher/launch.py). So each visible GPU carries its machine id
(`Gpu.physical`) for `--include`. We number GPUs in PCI bus order (CUDA_DEVICE_ORDER=PCI_BUS_ID, unless the user
chose an order), as nvidia-smi and NVML do, so that the launcher, the ranks, the resource sampler and the dashboard
mean the same GPU by the same number.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from trainer_core.common.errors import Text, text

if TYPE_CHECKING:
    from trainer_core.config.sections import PlacementArgs

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
ORDER_ENV = "CUDA_DEVICE_ORDER"
# A Slurm job step's GPUs by the node's own ids (CUDA_VISIBLE_DEVICES may be renumbered inside the job's cgroup).
SLURM_GPU_ENVS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")


@dataclass
class Gpu:
    index: int
    """CUDA's ordinal for it in this process (`cuda:<index>`): its place among the visible GPUs. `placement.gpus`
    counts in these."""

    name: str
    """The device name CUDA reports."""

    total_bytes: int
    """Its memory."""

    capability: tuple[int, int] = (0, 0)
    """CUDA compute capability (major, minor)."""

    physical: int | None = None
    """The machine's id for it (PCI order, as nvidia-smi numbers GPUs): what DeepSpeed's `--include` takes and the
    resource sampler asks NVML about. None when CUDA_VISIBLE_DEVICES names it in a way we cannot map to an id
    (see Hardware.gpu_problem)."""

    machine_id: int | None = None
    """The id its device lock and the dashboard name it by: Slurm's id for it where Slurm renumbered the job's GPUs,
    else `physical`."""

    @property
    def bf16(self) -> bool:
        return native_bf16(self.capability)

    @property
    def lock_id(self) -> int | None:
        return self.machine_id if self.machine_id is not None else self.physical


@dataclass
class Hardware:
    gpus: list[Gpu] = field(default_factory=list)
    """The GPUs CUDA shows this process (CUDA_VISIBLE_DEVICES honoured), by `Gpu.index`."""
    host_ram_bytes: int = 0
    cpu_cores: int = 1
    nvidia_driver: bool = False
    """The machine has a working NVIDIA driver (nvidia-smi answers, or /proc/driver/nvidia/version exists)."""
    gpu_problem: Text | None = None
    """Why GPUs this machine has cannot be used for a run (a CPU-only torch, unmappable CUDA_VISIBLE_DEVICES);
    preflight refuses GPU runs with it."""

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)


def native_bf16(capability: tuple[int, int]) -> bool:
    """The one bf16 decision, for training and chat: native bf16 (Ampere, compute capability 8.0, and later).
    torch.cuda.is_bf16_supported() is also true on V100/T4, where bf16 is emulated and slow."""
    return tuple(capability) >= (8, 0)


def cuda_devices() -> list[tuple[str, int, tuple[int, int]]]:
    """(name, memory bytes, compute capability) of each GPU CUDA shows this process, in its `cuda:<i>` order.
    The one place that asks CUDA: tests replace it with a simulated inventory (no GPU exists on the test machine)."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append((p.name, int(p.total_memory), (int(p.major), int(p.minor))))
    return out


def nvml_uuids() -> list[str]:
    """The GPUs' UUIDs by NVML index (PCI order); empty when NVML is unavailable. Maps UUIDs in
    CUDA_VISIBLE_DEVICES to ids. Replaced in tests (NVML cannot exist here)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            out = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                out.append(uuid.decode() if isinstance(uuid, bytes) else str(uuid))
            return out
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no pynvml, a driver fault: UUIDs stay unmapped and the caller says so
        return []


def nvidia_driver() -> bool:
    """Whether this machine has a working NVIDIA driver, whatever torch was installed."""
    if NVIDIA_PROC_VERSION.exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def use_pci_order() -> None:
    """Number GPUs as nvidia-smi and NVML do (see the module docstring), unless the user chose an order. Takes
    effect for CUDA initialised after it, in this process and the processes it starts (the ranks)."""
    os.environ.setdefault(ORDER_ENV, "PCI_BUS_ID")


def _int_list(value: str) -> list[int] | None:
    parts = [x.strip() for x in value.split(",") if x.strip()]
    return [int(x) for x in parts] if parts and all(x.isdigit() for x in parts) else None


def machine_ids(n_visible: int, env: dict[str, str] | None = None) -> tuple[list[int | None], Text | None]:
    """The machine id of each of the `n_visible` GPUs CUDA shows (None where unknown), and the problem when some
    cannot be mapped. Reads CUDA_VISIBLE_DEVICES: unset means ids 0..n-1; indices map as given; UUIDs (GPU-...) map
    through NVML; MIG instances cannot be selected by DeepSpeed's launcher, which takes whole GPUs by index."""
    env = os.environ if env is None else env
    raw = env.get(VISIBLE_ENV)
    if raw is None:
        return list(range(n_visible)), None
    names = [x.strip() for x in raw.split(",") if x.strip()][:n_visible]
    if any(x.startswith("MIG-") for x in names):
        return [None] * n_visible, text(
            "hardware.mig_visible", "{env}={value} names a MIG instance; DeepSpeed's launcher selects whole GPUs by "
            "index, so a run cannot use MIG instances: give whole GPUs in {env} (nvidia-smi -L lists them)",
            env=VISIBLE_ENV, value=raw)
    ids: list[int | None] = []
    uuids = None
    for name in names:
        if name.isdigit():
            ids.append(int(name))
            continue
        uuids = nvml_uuids() if uuids is None else uuids
        # CUDA accepts any unique prefix of a UUID, with or without "GPU-".
        hits = [i for i, u in enumerate(uuids) if u.startswith(name) or u.startswith("GPU-" + name)]
        ids.append(hits[0] if len(hits) == 1 else None)
    if len(ids) < n_visible or None in ids:
        return ids + [None] * (n_visible - len(ids)), text(
            "hardware.visible_unmapped", "{env}={value} names GPUs that could not be mapped to this machine's GPU "
            "ids (NVML could not resolve them); give GPU indices in {env} (nvidia-smi -L lists them)",
            env=VISIBLE_ENV, value=raw)
    return ids, None


def slurm_ids(n_visible: int, env: dict[str, str] | None = None) -> list[int] | None:
    """Slurm's ids of the visible GPUs, when a Slurm step's allocation lists exactly as many GPUs as are visible
    (inside a job's cgroup CUDA_VISIBLE_DEVICES counts from 0 again, so two jobs' "GPU 0" can be different GPUs)."""
    env = os.environ if env is None else env
    for key in SLURM_GPU_ENVS:
        ids = _int_list(env.get(key, ""))
        if ids is not None:
            return ids if len(ids) == n_visible else None
    return None


def _why_no_gpu() -> Text | None:
    """On a machine with an NVIDIA driver where torch sees no GPU: why, and what to do."""
    if os.environ.get(VISIBLE_ENV) is not None and not os.environ[VISIBLE_ENV].strip():
        return None  # CUDA_VISIBLE_DEVICES="" hides the GPUs on purpose: CPU ranks are what the user asked for
    try:
        import torch

        version, cuda = torch.__version__, torch.version.cuda
    except Exception:
        version, cuda = "?", None
    if cuda is None:
        return text("hardware.cpu_torch", "this machine has an NVIDIA GPU driver but the installed torch {version} is "
                    "a CPU-only build, so runs would train on CPU ranks; run scripts/setup_env.sh to install the CUDA "
                    "build (or set {env}= to train on CPU ranks on purpose)", version=version, env=VISIBLE_ENV)
    return text("hardware.cuda_unusable", "this machine has an NVIDIA GPU driver but torch {version} (CUDA {cuda}) "
                "sees no usable GPU (driver too old for this CUDA, or {env} names no GPU); runs would train on CPU "
                "ranks: check nvidia-smi (or set {env}= to train on CPU ranks on purpose)", version=version,
                cuda=cuda, env=VISIBLE_ENV)


def detect() -> Hardware:
    use_pci_order()
    problem = None
    try:
        found = cuda_devices()
    except Exception:  # a broken CUDA install must not take the dashboard down; we fall back to CPU
        found = []
    gpus = []
    if found:
        ids, problem = machine_ids(len(found))
        slurm = slurm_ids(len(found))
        for i, (name, total, cap) in enumerate(found):
            gpus.append(Gpu(i, name, total, cap, physical=ids[i],
                            machine_id=slurm[i] if slurm is not None else ids[i]))
    driver = nvidia_driver()
    if driver and not gpus:
        problem = _why_no_gpu()
    return Hardware(gpus=gpus, host_ram_bytes=psutil.virtual_memory().total, cpu_cores=psutil.cpu_count() or 1,
                    nvidia_driver=driver, gpu_problem=problem)


def run_gpus(hw: Hardware, placement: "PlacementArgs") -> list[Gpu]:
    """The visible GPUs a run's ranks use on this machine: `placement.gpus` (counted within the visible GPUs),
    else the first num_ranks; empty on a CPU machine. Ids beyond the visible GPUs are left out (preflight refuses
    them). For several nodes, this node's GPUs stand in for every node's."""
    wanted = placement.gpus or list(range(placement.num_ranks))
    return [hw.gpus[i] for i in wanted if i < len(hw.gpus)]


def include_ids(hw: Hardware, placement: "PlacementArgs") -> list[int] | None:
    """The machine ids DeepSpeed's `--include localhost:...` gets for a local GPU run; None otherwise (CPU ranks;
    several nodes, whose `placement.gpus` go to `--include` as they are, naming each node's own GPUs)."""
    if not hw.has_gpu or placement.launcher != "local":
        return None
    return [g.physical for g in run_gpus(hw, placement)]  # type: ignore[misc]  # preflight refused None ids


def lock_ids(hw: Hardware, placement: "PlacementArgs") -> list[int] | None:
    """The ids a run's device locks name its GPUs by (Gpu.lock_id); None on a CPU machine."""
    if not hw.has_gpu:
        return None
    if placement.launcher != "local":
        return placement.gpus or list(range(placement.num_ranks))
    return [g.lock_id for g in run_gpus(hw, placement)]  # type: ignore[misc]


def bf16_everywhere(gpus: list[Gpu]) -> bool:
    """The one bf16 decision, for training and chat: every GPU involved has native bf16."""
    return bool(gpus) and all(g.bf16 for g in gpus)


def resolve_precision(requested: str, gpus: list[Gpu] | None = None) -> str:
    """`auto` -> bf16 when every GPU the run uses supports it natively, fp16 (with loss scaling) on older GPUs,
    fp32 on a CPU. `gpus`: the run's GPUs (None: every GPU this process sees, which inside a rank are the run's)."""
    if requested != "auto":
        return requested
    gpus = detect().gpus if gpus is None else gpus
    if not gpus:
        return "fp32"
    return "bf16" if bf16_everywhere(gpus) else "fp16"


def warm_deepspeed_ops() -> None:
    """Compile DeepSpeed's JIT ops the runs use (CPU Adam; on the CPU accelerator its shared-memory comm op) now,
    once, instead of inside a run: the first build takes about a minute, and a run stopped mid-build would leave
    torch's extension lock behind, making every later run wait on it."""
    use_project_extension_dir()
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    names = ["CPUAdamBuilder"] + (["ShareMemCommBuilder"] if acc.device_name() == "cpu" else [])
    for name in names:
        builder = acc.create_op_builder(name)
        if builder is not None and builder.is_compatible():
            builder.load()


def use_project_extension_dir() -> None:
    """Build DeepSpeed's ops into this checkout's .cache, unless the user chose a folder: two checkouts or venvs
    sharing ~/.cache/torch_extensions would rebuild the same op over each other and wait on each other's lock."""
    import os

    from trainer_core.common import paths

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(paths.CACHE_DIR / "torch_extensions"))
