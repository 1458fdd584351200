"""What this machine has: accelerators, their memory and bf16 support, host RAM. Cheap; safe without a GPU."""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil


@dataclass
class Gpu:
    index: int
    name: str
    total_bytes: int
    bf16: bool


@dataclass
class Hardware:
    gpus: list[Gpu] = field(default_factory=list)
    host_ram_bytes: int = 0
    cpu_cores: int = 1

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)


def detect() -> Hardware:
    gpus = []
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                gpus.append(Gpu(i, p.name, int(p.total_memory), p.major >= 8))
    except Exception:  # a broken CUDA install must not take the dashboard down; we fall back to CPU
        gpus = []
    return Hardware(gpus=gpus, host_ram_bytes=psutil.virtual_memory().total, cpu_cores=psutil.cpu_count() or 1)


def resolve_precision(requested: str, hw: Hardware | None = None) -> str:
    """`auto` -> bf16 on GPUs that support it, fp16 (with loss scaling) on older GPUs, fp32 on a CPU."""
    if requested != "auto":
        return requested
    hw = hw or detect()
    if not hw.has_gpu:
        return "fp32"
    return "bf16" if all(g.bf16 for g in hw.gpus) else "fp16"


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

    from trainer_core import paths

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(paths.CACHE_DIR / "torch_extensions"))
