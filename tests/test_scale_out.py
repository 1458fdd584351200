# .venv/bin/python -m pytest tests/test_scale_out.py -q    (the 2-node tests are slow: real deepspeed launchers)
"""Scale-out on DeepSpeed's own launcher: per-node commands, exported Slurm/shell scripts, and a 2-"node" run on
one machine (two --no_ssh launchers meeting at 127.0.0.1)."""

import math
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import cli, quick_sets, wait_for
from trainer_core.runs import protocol
from trainer_core.runs.cluster import NODE_SCRIPT, SLURM_SCRIPT, node_command_line
from trainer_core.config.run_config import load_config
from trainer_core.runs.launch import free_port
from trainer_core.runs.state import read_state
from trainer_core.common.tailing import read_all_rows

QUICKSTART = "configs/quickstart.yaml"
HOSTS = "node0 slots=1; node1 slots=1"


def two_node_sets(**extra) -> list[str]:
    return quick_sets(**{"placement.launcher": "no_ssh", "placement.num_nodes": 2, "placement.hostfile": HOSTS,
                         "placement.master_port": free_port(), "data.eval_ratio": 0, **extra})


def created_run(*sets) -> Path:
    from trainer_core.runs.orchestrate import create_run

    return create_run(load_config(QUICKSTART, [s for s in sets if s != "--set"]))


def test_scripts_are_valid_bash_and_run_the_planned_command(runs_root, starter_model):
    run = created_run(*two_node_sets(name="scripts"))
    node, slurm = run / NODE_SCRIPT, run / SLURM_SCRIPT
    for script in (node, slurm):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        assert os.access(script, os.X_OK)
    cfg = load_config(run / protocol.CONFIG)
    line = node_command_line(cfg, run, has_gpu=False)
    assert line in node.read_text() and "--no_ssh" in line and '--node_rank "$NODE_RANK"' in line
    # The Slurm script starts that same per-node script on every node, one task each.
    text = slurm.read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=1" in text
    assert f"bash {shlex.quote(str(run))}/{NODE_SCRIPT}" in text
    # plan shows one command per node, each with its rank.
    planned = protocol.read_json(run / protocol.COMMAND)["argv"]
    assert [a[a.index("--node_rank") + 1] for a in planned] == ["0", "1"]
    assert (run / "hostfile").read_text() == "node0 slots=1\nnode1 slots=1\n"


def micro(run: Path) -> int:
    return load_config(run / protocol.CONFIG).train.micro_batch_size


def rows_and_steps(run: Path, log: str) -> tuple[int, list[int], int]:
    n_rows = int(re.search(r"(\d+) training rows", log).group(1))
    steps = [r["step"] for r in read_all_rows(run / protocol.METRICS) if r.get("loss") is not None]
    return n_rows, steps, protocol.read_status(run).total_steps


@pytest.mark.slow
def test_two_nodes_on_loopback_train_with_sharded_data(runs_root):
    proc = cli("train", QUICKSTART, "--detach", *two_node_sets(name="two-nodes"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Path(proc.stdout.strip().splitlines()[-1])
    # Node 1 joins from "another machine": its own launcher, same run directory, same master.
    joined = cli("join", str(run), "--node-rank", "1", "--no-lock", timeout=600)
    assert joined.returncode == 0, joined.stderr[-3000:]
    deadline = time.time() + 120
    while read_state(run).state not in protocol.TERMINAL and time.time() < deadline:
        time.sleep(0.5)
    st = read_state(run)
    assert st.state == protocol.COMPLETED, st.error
    assert st.nodes_expected == 2 and st.world_size == 2
    n_rows, steps, total = rows_and_steps(run, (run / protocol.LOG).read_text(encoding="utf-8", errors="replace"))
    assert total == math.ceil(n_rows / (micro(run) * 2)) < math.ceil(n_rows / micro(run)), \
        "data must be sharded over both nodes' ranks"
    assert steps == list(range(1, total + 1)), "only global rank 0 writes metrics"
    assert protocol.has_final(run) and protocol.complete_checkpoints(run)


def slurm_job(run: Path, tmp_path: Path) -> subprocess.Popen:
    """Start the run's generated Slurm script with stand-ins for Slurm's tools: scontrol lists two nodes, srun starts
    one task per node with SLURM_NODEID set, as Slurm does. Everything after that is the script and DeepSpeed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Names must resolve here: the first one becomes MASTER_ADDR, as the first node of an allocation does.
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'localhost\\n127.0.0.1\\n'\n")
    (bin_dir / "srun").write_text(
        "#!/bin/bash\nshift 2\npids=()\nfor id in 0 1; do SLURM_NODEID=$id \"$@\" & pids+=($!); done\n"
        "rc=0; for p in \"${pids[@]}\"; do wait $p || rc=1; done; exit $rc\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node[0-1]")
    return subprocess.Popen(["bash", str(run / SLURM_SCRIPT)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_job(job: subprocess.Popen) -> None:
    if job.poll() is None:  # never leave a hung job's ranks behind
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()


@pytest.mark.slow
def test_slurm_script_runs_both_nodes(runs_root, tmp_path):
    run = created_run(*two_node_sets(name="slurm"))
    job = slurm_job(run, tmp_path)
    try:
        output, _ = job.communicate(timeout=600)
    finally:
        kill_job(job)
    assert job.returncode == 0, output[-3000:]
    st = read_state(run)
    assert st.state == protocol.COMPLETED and protocol.has_final(run)
    assert (run / "hostfile").read_text() == "localhost slots=1\n127.0.0.1 slots=1\n"
    n_rows, steps, total = rows_and_steps(run, output)  # sbatch would put this in slurm-%j.log
    assert total == math.ceil(n_rows / (micro(run) * 2)) and steps == list(range(1, total + 1))
    beat = protocol.read_json(run / protocol.HEARTBEAT)
    assert beat["host"] == socket.gethostname() and protocol.heartbeat_age(run) < protocol.HEARTBEAT_EVERY_S + 30


@pytest.mark.slow
def test_a_killed_slurm_job_is_reported_failed_once_its_heartbeat_stops(runs_root, tmp_path, monkeypatch):
    """No supervisor watches an external job: when it dies without a word (scancel -9, node lost), the dashboard
    must stop showing it as running. The staleness limit is lowered for the test; the trainer's beat is real."""
    run = created_run(*two_node_sets(name="slurm-killed", **{"train.max_steps": 100000, "train.save_steps": 0}))
    job = slurm_job(run, tmp_path)
    try:
        wait_for(lambda: protocol.read_status(run).step >= 2, 300,
                 "the external run to train")
        assert read_state(run).state == protocol.RUNNING and not read_state(run).alive  # no supervisor here
    finally:
        kill_job(job)
    last_beat = protocol.read_json(run / protocol.HEARTBEAT)["time"]
    stale = protocol.HEARTBEAT_EVERY_S + 5
    monkeypatch.setattr(protocol, "HEARTBEAT_STALE_S", stale)
    assert read_state(run).state == protocol.RUNNING  # a beat at most one interval old: not judged yet
    st = wait_for(lambda: (s := read_state(run)).state == protocol.FAILED and s, stale + 10, "the run to be judged lost")
    assert protocol.read_json(run / protocol.HEARTBEAT)["time"] == last_beat  # nothing beats any more
    assert st.interrupted and st.error
    assert protocol.read_status(run).state == protocol.RUNNING  # judged from the directory, nothing rewritten


def test_a_single_node_run_also_gets_cluster_scripts(runs_root, starter_model):
    run = created_run("placement.num_ranks=2", "name=local")
    assert subprocess.run(["bash", "-n", str(run / NODE_SCRIPT)]).returncode == 0
    text = (run / NODE_SCRIPT).read_text()
    assert "--no_ssh" in text and "--num_gpus 2" in text
    (argv,) = protocol.read_json(run / protocol.COMMAND)["argv"]
    assert argv[argv.index("--num_gpus") + 1] == "2" and "--no_ssh" not in argv, "the run itself launches locally"


@pytest.mark.slow
def test_an_external_job_stops_from_the_studio_with_a_checkpoint(runs_root, tmp_path):
    """Stop works on a Slurm-launched run through control.json, the channel every trainer polls; force-stop, which
    needs the process group, is refused with where to do it instead."""
    from trainer_core.common.errors import UserError
    from trainer_core.runs.lifecycle import stop

    run = created_run(*two_node_sets(name="slurm-stop", **{"train.max_steps": 100000, "train.save_steps": 0}))
    protocol.write_json_atomic(run / protocol.CONTROL, {"action": "save_and_stop", "requested": 0})  # left by an earlier attempt
    job = slurm_job(run, tmp_path)
    try:
        wait_for(lambda: protocol.read_status(run).step >= 2, 300, "the external run to train")
        with pytest.raises(UserError, match="started outside the studio"):
            stop(run, force=True)
        st = stop(run, save_timeout=120).state
        output, _ = job.communicate(timeout=120)
    finally:
        kill_job(job)
    assert job.returncode == 0, output[-3000:]
    assert st.state == protocol.STOPPED and read_state(run).state == protocol.STOPPED
    assert protocol.complete_checkpoints(run) and not protocol.has_final(run)
