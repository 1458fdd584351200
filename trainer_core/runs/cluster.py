"""Cluster scripts for a run: a plain per-node shell script and a Slurm batch script, both running the same
DeepSpeed `--no_ssh` launch that `plan` shows, written into the run directory.

    bash runs/<name>/launch_node.sh NODE_RANK [MASTER_ADDR]     on every node (same shared run directory)
    sbatch runs/<name>/launch_slurm.sbatch                       on a Slurm cluster

Every value that reaches a script is validated by the run config and quoted with shlex: scripts are generated
text, never built from unchecked user input.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from trainer_core.common import paths
from trainer_core.config.run_config import RunConfig
from trainer_core.runs.launch import node_argv

NODE_SCRIPT = "launch_node.sh"
SLURM_SCRIPT = "launch_slurm.sbatch"
_RANK, _ADDR = "@@NODE_RANK@@", "@@MASTER_ADDR@@"


def node_command_line(cfg: RunConfig, run_dir: Path, has_gpu: bool = True) -> str:
    """The no_ssh launch of one node as a shell line, with the node rank and master address as variables."""
    p = cfg.placement
    # A single-node config exported for a cluster: the hostfile is written at job start (see slurm_script).
    hosts = p.hostfile or "; ".join(f"node{i} slots={p.num_ranks}" for i in range(p.num_nodes))
    no_ssh = dataclasses.replace(cfg, placement=dataclasses.replace(p, launcher="no_ssh", hostfile=hosts))
    # GPU subsets (--include) need host names; without a hostfile in the config every GPU of a node is used.
    argv = node_argv(no_ssh, run_dir, node_rank=0, has_gpu=has_gpu and bool(cfg.placement.hostfile.strip()))
    argv[argv.index("--node_rank") + 1] = _RANK
    argv[argv.index("--master_addr") + 1] = _ADDR
    line = " ".join(shlex.quote(a) for a in argv)
    return line.replace(_RANK, '"$NODE_RANK"').replace(_ADDR, '"$MASTER_ADDR"')


def node_script(cfg: RunConfig, run_dir: Path, has_gpu: bool = True) -> str:
    root = shlex.quote(str(paths.PROJECT_ROOT))
    return f"""#!/usr/bin/env bash
# Node launcher for run {cfg.name}: start it on each of the {cfg.placement.num_nodes} nodes, all sharing this run
# directory. Usage: bash {NODE_SCRIPT} NODE_RANK [MASTER_ADDR]   (under Slurm the rank comes from SLURM_NODEID)
set -euo pipefail
NODE_RANK="${{1:-${{SLURM_NODEID:?give the node rank (0 is the master) as the first argument}}}}"
MASTER_ADDR="${{2:-{shlex.quote(cfg.placement.master_addr)}}}"
cd {root}
export PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}
exec {node_command_line(cfg, run_dir, has_gpu)}
"""


def slurm_script(cfg: RunConfig, run_dir: Path) -> str:
    p = cfg.placement
    run = shlex.quote(str(run_dir))
    return f"""#!/usr/bin/env bash
#SBATCH --job-name={cfg.name}
#SBATCH --nodes={p.num_nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={p.num_ranks}
#SBATCH --output={run_dir}/slurm-%j.log
# Slurm batch script for run {cfg.name}: one DeepSpeed launcher per node, {p.num_ranks} ranks each.
set -euo pipefail
# This allocation's nodes become the hostfile DeepSpeed reads; the first one is the master.
scontrol show hostnames "$SLURM_JOB_NODELIST" | sed 's/$/ slots={p.num_ranks}/' > {run}/hostfile
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
srun --nodes={p.num_nodes} --ntasks-per-node=1 bash {run}/{NODE_SCRIPT} "" "$MASTER_ADDR"
"""
