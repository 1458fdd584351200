# .venv/bin/python -m pytest tests/test_collectives.py -q
"""Every collective our ranks make hands the process group tensors on the accelerator's device.

On a GPU, DeepSpeed's process group is plain NCCL, which serves CUDA tensors only; a CPU tensor in an all-reduce
fails with "No backend type associated with device type cpu", at the first step's stop agreement. On this machine the
accelerator is the CPU, where that mistake cannot show, so two real rank processes (tests/device_only_rank.py) run
our ranks' collective paths (stop agreement, metrics, evaluation's reduction, checkpoint and final-save barriers)
under a group that serves one non-CPU device type only, with torch's lazy-tensor device standing in for CUDA and
DeepSpeed's accelerator naming it. The GPU and NCCL are simulated; the refusal of CPU tensors is torch's own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import free_port

from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.runs import protocol

RANK = Path(__file__).with_name("device_only_rank.py")


def test_rank_collectives_use_the_accelerator_device(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(RANK), str(r), port, str(run)], cwd=PROJECT_ROOT,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    seen = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    for s in seen:
        assert s["cpu_tensor_error"] == "No backend type associated with device type cpu"
        assert s["stop_without_request"] is False and s["stop_on_request"] is True and s["lost"] is True
        assert s["eval"] == [1.5, 5.0]
    assert seen[0]["lost_cause"] == "rank 1's watchdog fired"  # rank 0 learnt rank 1's cause through gather
    rows = [json.loads(line) for line in (run / protocol.METRICS).read_text().splitlines()]
    assert [(r["tokens"], r["label_tokens"], len(r["peak_mem_bytes"])) for r in rows] == [(300, 30, 2)]
    assert protocol.read_status(run).last_checkpoint == 2
    assert (protocol.checkpoint_dir(run, 2) / protocol.COMPLETE_MARKER).is_file()
