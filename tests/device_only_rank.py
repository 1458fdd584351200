"""One rank of tests/test_collectives.py: our ranks' collective paths under a process group that, like NCCL, serves
one device type only, and that type is not the CPU.

    python tests/device_only_rank.py RANK PORT RUN_DIR

What is simulated, and why. A GPU cannot exist here, so the accelerator is torch's lazy-tensor device ("lazy", its
TorchScript backend computes on the CPU), standing in for CUDA:
- `DeviceOnlyGroup` plays NCCL: the group's one registered backend is for "lazy" (so `_device_types` is [lazy], as
  NCCL's is [cuda], and all_gather_object picks that device as it picks cuda under NCCL). Lazy tensors are carried
  by gloo through CPU copies. Any other tensor goes to torch's own C++ ProcessGroup, which has no backend for it and
  raises the very error a GPU run meets: "No backend type associated with device type cpu".
- `LazyAccelerator` plays DeepSpeed's CUDA accelerator: DeepSpeed's CPU accelerator whose device is "lazy".
Everything else is ours and real: trainer_core.training.ranks and the RunDirCallback, on a real run directory.
Each rank writes what it saw to RUN_DIR/rank<N>.json for the test to compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

DEVICE = "lazy"


def finished(value) -> dist.Work:
    fut = torch.futures.Future()
    fut.set_result(value)
    return torch._C._distributed_c10d._create_work_from_future(fut)


class DeviceOnlyGroup(dist.ProcessGroup):
    """A process group with one backend, for DEVICE only (see the module docstring)."""

    def __init__(self, store, rank, size, timeout):
        super().__init__(rank, size)
        self.gloo = dist.ProcessGroupGloo(store, rank, size, timeout)
        self._register_backend(torch.device(DEVICE), dist.ProcessGroup.BackendType.CUSTOM, self.gloo)

    @staticmethod
    def _ours(tensors) -> bool:
        return all(t.device.type == DEVICE for t in tensors)

    def allreduce(self, tensors, opts=None):
        if not self._ours(tensors):
            return super().allreduce(tensors, opts)  # torch's own device check raises
        host = [t.cpu() for t in tensors]
        o = dist.AllreduceOptions()
        o.reduceOp = opts.reduceOp
        self.gloo.allreduce(host, o).wait()
        for t, h in zip(tensors, host):
            t.copy_(h)
        return finished(tensors)

    def allgather(self, outputs, inputs, opts=None):
        if not self._ours(inputs):
            return super().allgather(outputs, inputs, opts)
        host = [[t.cpu() for t in out] for out in outputs]
        self.gloo.allgather(host, [t.cpu() for t in inputs]).wait()
        for out, h in zip(outputs, host):
            for t, x in zip(out, h):
                t.copy_(x)
        return finished(outputs)

    def broadcast(self, tensors, opts=None):
        if not self._ours(tensors):
            return super().broadcast(tensors, opts)
        host = [t.cpu() for t in tensors]
        o = dist.BroadcastOptions()
        o.rootRank, o.rootTensor = opts.rootRank, opts.rootTensor
        self.gloo.broadcast(host, o).wait()
        for t, h in zip(tensors, host):
            t.copy_(h)
        return finished(tensors)

    def barrier(self, opts=None):
        self.gloo.barrier().wait()  # carries no tensor of ours
        return finished([])

    def getBackendName(self):
        return "device_only"


def lazy_accelerator():
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    class LazyAccelerator(CPU_Accelerator):
        def device_name(self, device_index=None):
            return DEVICE

        def current_device_name(self):
            return DEVICE

    return LazyAccelerator()


def main(rank: int, port: int, run: Path) -> None:
    import torch._lazy.ts_backend
    from deepspeed.accelerator import set_accelerator
    from transformers import TrainerControl, TrainerState

    from trainer_core.config.run_config import RunConfig
    from trainer_core.runs import protocol
    from trainer_core.training import ranks
    from trainer_core.training.callbacks import RunDirCallback
    from trainer_core.training.trainer import TokenCounts

    torch._lazy.ts_backend.init()
    dist.Backend.register_backend("device_only", DeviceOnlyGroup, devices=[DEVICE])
    dist.init_process_group("device_only", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    set_accelerator(lazy_accelerator())
    seen: dict = {}
    try:
        dist.all_reduce(torch.tensor([1]))
    except RuntimeError as e:  # the harness itself: the group must refuse CPU tensors as NCCL does
        seen["cpu_tensor_error"] = str(e).splitlines()[0]

    cb = RunDirCallback(run, RunConfig(), TokenCounts(tokens=100 * (rank + 1), label_tokens=10 * (rank + 1)))
    state, control = TrainerState(global_step=1, max_steps=10), TrainerControl()
    cb.on_train_begin(None, state, control)
    cb.on_step_end(None, state, control)  # stop agreement, no request
    seen["stop_without_request"] = control.should_training_stop
    cb.on_log(None, state, control, logs={"loss": 2.0})  # metrics: token sums and every rank's peak memory

    # Evaluation's exact loss (SupervisedTrainer.evaluation_loop) is this reduction of per-rank sums and counts.
    seen["eval"] = ranks.all_reduce_floats([0.5 * (rank + 1), float(rank + 2)])

    if rank == 0:
        protocol.request(run, protocol.SAVE_AND_STOP)  # only rank 0 reads control.json: no race with rank 1
    state.global_step = 2
    cb.on_step_end(None, state, control)  # stop agreement, with a request
    seen["stop_on_request"] = control.should_training_stop

    if rank == 1:
        ranks.LOST["cause"] = "rank 1's watchdog fired"
    cb.on_step_end(None, state, TrainerControl())  # a lost parent seen by one rank: every rank stops, rank 0 says why
    seen["lost"], seen["lost_cause"] = cb.lost, ranks.LOST.get("cause")

    if rank == 0:
        protocol.checkpoint_dir(run, state.global_step).mkdir(parents=True)
    cb.on_save(None, state, control)  # checkpoint barrier, then rank 0 marks it complete
    ranks.barrier()  # save_final's barriers
    cb.on_train_end(None, state, control)
    (run / f"rank{rank}.json").write_text(json.dumps(seen), encoding="utf-8")
    ranks.close_distributed()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
