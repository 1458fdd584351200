"""What every rank process does around the training itself: join the process group, tie its fate to the processes
above it, share small numbers with the other ranks, and leave cleanly."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from trainer_core.common.errors import Text, text
from trainer_core.runs import device_locks
from trainer_core.runs import processes as run_processes
from trainer_core.runs import protocol

# Why this rank saves and stops on its own, without a stop request: the process it answers to died.
LOST: dict[str, Text] = {}


def dist():
    """torch.distributed once the process group is up, else None (a single process, or before init)."""
    import torch.distributed as d

    return d if d.is_available() and d.is_initialized() else None


def global_rank() -> int:
    d = dist()
    return d.get_rank() if d else int(os.environ.get("RANK", 0))


def log_rank0(msg: str) -> None:
    if global_rank() == 0:
        print(f"[trainer] {msg}", flush=True)


def init_distributed() -> None:
    """Initialise torch.distributed through DeepSpeed and make accelerate agree on the world size.

    On DeepSpeed's CPU accelerator, accelerate leaves its backend unset and reports one process even though
    DeepSpeed runs N ranks: the HF Trainer then gives every rank the whole dataset and lets every rank write logs
    and checkpoints. We build accelerate's shared state ourselves and correct it from torch.distributed, and the
    TrainingArguments reuse it (use_configured_state).
    """
    import deepspeed
    from accelerate.state import PartialState
    from deepspeed.accelerator import get_accelerator

    # This rank's GPU before any collective: NCCL's barrier and all_gather_object use the current CUDA device, and
    # every rank left on GPU 0 would meet there. A no-op on DeepSpeed's CPU accelerator.
    get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", 0)))
    deepspeed.init_distributed()
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # read by accelerate, set for it: not a switch of ours
    state = PartialState()
    d = dist()
    if d is not None and state.num_processes != d.get_world_size():
        state.num_processes = d.get_world_size()
        state.process_index = d.get_rank()
        state.local_process_index = int(os.environ.get("LOCAL_RANK", 0))
        state.backend = d.get_backend()
    release_shm_workspace()


def release_shm_workspace() -> None:
    """Remove the name of this rank's /dev/shm all-reduce buffer once every rank has mapped it.

    DeepSpeed's CPU accelerator creates one 66 MB shared-memory file per rank for its all-reduce (named by uid,
    MASTER_ADDR, MASTER_PORT and rank) and never unlinks it, so every CPU run would leave that much RAM taken in
    /dev/shm until reboot; hundreds of runs filled this machine's RAM and got ranks OOM-killed. After a barrier every
    rank has opened every other rank's buffer (DeepSpeed's initialisation waits for that), so the names can go: the
    mappings stay valid, and the kernel frees the memory when the last rank exits, however it exits.
    """
    d = dist()
    if d is None or torch.cuda.is_available():
        return
    d.barrier()
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_" \
           f"{os.environ.get('MASTER_PORT')}_{d.get_rank()}"
    Path("/dev/shm", name).unlink(missing_ok=True)


def share_fate(run: Path, supervised: bool) -> list[int]:
    """Tie this rank to the processes above it. DeepSpeed's `launch` dying sends SIGUSR1 (parent-death signal); the
    supervisor dying is seen by a watchdog thread. Either makes every rank save at the next step and exit. The
    device locks are joined, so they stay taken while this rank lives, whatever died first. Returns their fds."""
    signal.signal(signal.SIGUSR1, lambda *_: LOST.setdefault("cause", text("training.lost_launch",
                                                                           "DeepSpeed's launch process died")))
    run_processes.die_with_parent(signal.SIGUSR1)
    manifest = protocol.read_json(run / protocol.MANIFEST, {}) or {}
    # A manifest left by an earlier supervised attempt means nothing to a run started by hand or by Slurm.
    if not supervised or not manifest or not run_processes.on_this_host(manifest):
        return []
    fds = device_locks.hold_as_rank(run, manifest.get("lock_keys") or [])  # open until this process exits
    run_processes.watch_process(manifest, lambda: LOST.setdefault("cause", text("training.lost_supervisor",
                                                                            "the run's supervisor process was lost")))
    return fds


class StoppedStarting(Exception):
    """A stop was requested during start-up: every rank leaves together, before training a step."""


def startup_step(run: Path, phase: str) -> None:
    """Enter start-up step `phase` (one of protocol.STARTUP_PHASES): every rank first leaves, raising
    StoppedStarting, if a stop was requested; then rank 0 says in status.json which step the run is at. Rank 0 reads
    control.json and the verdict is shared, so all ranks leave at the same step (a rank that went on alone would wait
    forever in the next collective). Before the process group is up the ranks cannot agree, so only a single rank
    checks there; the supervisor ends ranks that a stop finds in a step they cannot leave (stop_while_starting)."""
    stop = 1 if global_rank() == 0 and protocol.read_control(run).action else 0
    if dist() is not None or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        if all_reduce_ints([stop])[0]:
            raise StoppedStarting
    if global_rank() == 0:
        protocol.update_status(run, **protocol.startup_phase(phase))


def collective_device() -> torch.device:
    """Where a tensor handed to a collective must live: the accelerator's current device (cuda:<local rank> on a GPU,
    cpu on DeepSpeed's CPU accelerator). On CUDA, DeepSpeed's process group is plain NCCL, which serves only CUDA
    tensors: a CPU tensor fails with "No backend type associated with device type cpu". A gloo backend beside NCCL
    ("cpu:gloo,cuda:nccl") would also work, but it opens a second set of connections between all ranks, which
    multi-node clusters must then route (GLOO_SOCKET_IFNAME), for the sake of a few integers per step."""
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def _all_reduce(values: list, dtype: torch.dtype) -> list:
    d = dist()
    if d is None:
        return list(values)
    t = torch.tensor(values, dtype=dtype, device=collective_device())
    d.all_reduce(t)
    return t.tolist()


def all_reduce_ints(values: list[int]) -> list[int]:
    """The sum over ranks of each value (the values themselves in a single process)."""
    return _all_reduce(values, torch.long)


def all_reduce_floats(values: list[float]) -> list[float]:
    return [float(v) for v in _all_reduce(values, torch.float64)]


def gather(value) -> list:
    """Every rank's value, in rank order. all_gather_object picks the group's device itself (the current CUDA
    device under NCCL, set in init_distributed)."""
    d = dist()
    if d is None:
        return [value]
    out = [None] * d.get_world_size()
    d.all_gather_object(out, value)
    return out


def barrier() -> None:
    if dist() is not None:
        dist().barrier()


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # CPU: the rank's peak RSS


def close_distributed() -> None:
    """Tear down the process group before the interpreter exits: left to exit-time destructors, a gloo rank
    sometimes aborted ("terminate called without an active exception") after a clean stop, failing the job."""
    d = dist()
    if d is not None:
        d.destroy_process_group()
