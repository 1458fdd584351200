"""Which device a chat loads its models on: a GPU that no live run holds (read from the device locks), so a chat
beside training never takes memory a run needs; or a refusal naming the runs that hold them all.

The chat does not take a lock itself: a dashboard keeps its chat models loaded for as long as it runs, and a lock
held that long would refuse every run on that GPU. A run started later on the chat's GPU is seen at the next
choice, and the Chat page then moves its models to a free device (releasing the old copies).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer_core.config.hardware import Gpu, Hardware, detect
from trainer_core.common.errors import Text, UserError, text
from trainer_core.runs import device_locks


@dataclass(frozen=True)
class ChatDevice:
    device: str
    """What torch takes: "cpu" or "cuda:<i>" (i counted within CUDA_VISIBLE_DEVICES)."""

    gpu: Gpu | None = None
    """The GPU, None on a CPU."""

    def describe(self) -> Text:
        """The device in words, for the page and the CLI's stderr."""
        if self.gpu is None:
            return text("runs.chat_on_cpu", "CPU (no GPU here)")
        g = self.gpu
        return text("runs.chat_on_gpu", "{device}: GPU {id} ({name}, {gib:.0f} GiB, {dtype}), held by no run",
                    device=self.device, id=g.lock_id if g.lock_id is not None else g.index, name=g.name,
                    gib=g.total_bytes / 1024**3, dtype="bf16" if g.bf16 else "fp32")


def choose(hw: Hardware | None = None) -> ChatDevice:
    """The first GPU no live run holds; the CPU on a machine without a GPU. Raises UserError naming the runs when
    every GPU is held."""
    hw = hw or detect()
    if not hw.has_gpu:
        return ChatDevice("cpu")
    busy = []
    for g in hw.gpus:
        # A GPU named in a way no lock can name (a MIG instance) cannot hold one of our runs: those are refused.
        key = device_locks.device_keys(1, [g.lock_id], True)[0] if g.lock_id is not None else None
        holder = device_locks.holder(key) if key is not None else None
        if holder is None:
            return ChatDevice(f"cuda:{g.index}", g)
        busy.append(f"GPU {g.lock_id}: {holder}")
    raise UserError("runs.chat_all_gpus_busy", "every GPU is in use by a training run ({busy}); chat would take "
                    "memory the run needs: wait for a run to end, or stop one", busy="; ".join(busy))
