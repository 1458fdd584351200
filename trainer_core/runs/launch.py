"""The exact commands that start a run: DeepSpeed's own launcher, as argv lists (never a shell string).

One node: `deepspeed --include localhost:0,1 ...` (GPUs) or `--num_gpus N` (CPU ranks). Several nodes: a hostfile with
the pdsh/ssh launcher from node 0, or `--no_ssh` with one launcher per node (`--node_rank`, `--master_addr`).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import sys
from pathlib import Path

from trainer_core.common import paths
from trainer_core.config.hardware import ORDER_ENV
from trainer_core.config.run_config import RunConfig
from trainer_core.common.errors import UserError

HOSTFILE = "hostfile"


def runner_prefix() -> list[str]:
    # The venv's interpreter runs DeepSpeed's runner module: no reliance on PATH or on the `deepspeed` shim.
    return [sys.executable, "-u", "-m", "deepspeed.launcher.runner"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_hostfile(text: str) -> list[tuple[str, int]]:
    """`host slots=N` lines (or `;`-separated), as DeepSpeed reads them; validated here with the line named."""
    hosts = []
    for i, raw in enumerate(text.replace(";", "\n").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("slots="):
            raise UserError("runs.hostfile_line", "placement.hostfile line {line} {text!r} must look like "
                            "'host1 slots=4'", line=i, text=raw.strip())
        host, slots = parts[0], parts[1][len("slots="):]
        if not re.fullmatch(r"[0-9]+", slots) or int(slots) < 1:  # ASCII digits: DeepSpeed parses with \d+
            raise UserError("runs.hostfile_slots", "placement.hostfile line {line}: slots must be a positive number "
                            "(got {slots!r})", line=i, slots=slots)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", host):
            raise UserError("runs.hostfile_host", "placement.hostfile line {line}: {host!r} is not a host name",
                            line=i, host=host)
        if any(h == host for h, _ in hosts):  # DeepSpeed refuses the file at launch; say so now
            raise UserError("runs.hostfile_twice", "placement.hostfile line {line}: {host} is listed twice", line=i,
                            host=host)
        hosts.append((host, int(slots)))
    if not hosts:
        raise UserError("runs.hostfile_empty", "placement.hostfile lists no hosts")
    return hosts


def hostfile_text(cfg: RunConfig) -> str:
    """The hostfile content for multi-node runs (from a path or the inline lines)."""
    spec = cfg.placement.hostfile.strip()
    if "slots=" not in spec:
        if not paths.resolve(spec).is_file():
            raise UserError("runs.hostfile_neither", "placement.hostfile {spec!r} is neither a file nor "
                            "'host slots=N' lines", spec=spec)
        spec = paths.resolve(spec).read_text(encoding="utf-8")
    hosts = parse_hostfile(spec)
    gpus = cfg.placement.gpus
    for host, slots in hosts:
        if slots < cfg.placement.num_ranks:
            raise UserError("runs.hostfile_few_slots", "placement.hostfile gives {host} {slots} slots but "
                            "placement.num_ranks is {ranks}", host=host, slots=slots, ranks=cfg.placement.num_ranks)
        if gpus and max(gpus) >= slots:
            raise UserError("runs.hostfile_gpu_missing", "placement.gpus asks for GPU {gpu} but placement.hostfile "
                            "gives {host} only {slots} slots (GPUs 0-{last})", gpu=max(gpus), host=host, slots=slots,
                            last=slots - 1)
    if len(hosts) != cfg.placement.num_nodes:
        raise UserError("runs.hostfile_node_count", "placement.hostfile lists {n} hosts but placement.num_nodes is "
                        "{nodes}", n=len(hosts), nodes=cfg.placement.num_nodes)
    return "".join(f"{h} slots={s}\n" for h, s in hosts)


def trainer_args(run_dir: Path, resume_from: Path | None, supervised: bool = False) -> list[str]:
    args = ["--module", "trainer_core.training.train", "--run-dir", str(run_dir)]
    if resume_from is not None:
        args += ["--resume-from", str(resume_from)]
    if supervised:
        # On the command line, not in the environment: DeepSpeed's pdsh runner forwards only some variables to the
        # other nodes, but every rank gets the same argv.
        args.append("--supervised")
    return args


def node_argv(cfg: RunConfig, run_dir: Path, *, node_rank: int | None = None, master_port: int | None = None,
              resume_from: Path | None = None, has_gpu: bool = False, supervised: bool = False,
              include: list[int] | None = None) -> list[str]:
    """The launcher argv for one node (for local and pdsh/ssh runs, the only node that launches). `supervised`: the
    run's supervisor starts it and records the final state (the ranks then leave that to it). `include`: a local
    GPU run's GPUs by the machine's ids (preflight.include_ids): DeepSpeed's runner drops CUDA_VISIBLE_DEVICES when
    given `--include` and reads the ids as the machine's, so `placement.gpus` (counted within the visible GPUs)
    cannot go there as it is."""
    rank_args = trainer_args(run_dir, resume_from, supervised)
    p = cfg.placement
    port = master_port or p.master_port
    argv = runner_prefix() + ["--no_local_rank", "--master_port", str(port)]
    if p.launcher == "local":
        if has_gpu:
            gpus = include if include is not None else (p.gpus or list(range(p.num_ranks)))
            argv += ["--include", "localhost:" + ",".join(map(str, gpus))]
        else:
            argv += ["--num_gpus", str(p.num_ranks)]
        argv += ["--master_addr", "127.0.0.1"]
        return argv + rank_args
    # Several nodes: DeepSpeed reads the node list (and so the world size) from the hostfile in every mode.
    argv += ["--hostfile", str(run_dir / HOSTFILE), "--master_addr", p.master_addr]
    if p.launcher in ("pdsh", "ssh"):
        # DeepSpeed reaches the other nodes over ssh through pdsh; "ssh" names that transport for users.
        argv += ["--launcher", "pdsh"]
        _check_remote_shell_safe([str(paths.PROJECT_ROOT), sys.executable, *rank_args])
    else:  # no_ssh: every node runs its own launcher with its rank; they meet at the master address
        rank = p.node_rank if node_rank is None else node_rank
        argv += ["--no_ssh", "--node_rank", str(rank)]
    if p.gpus and has_gpu:
        hosts = [h for h, _ in parse_hostfile(hostfile_text(cfg))]
        argv += ["--include", "@".join(f"{h}:{','.join(map(str, p.gpus))}" for h in hosts)]
    else:
        # Without these DeepSpeed starts one rank per hostfile slot, more than num_ranks when a host has spare slots.
        # (They cannot be combined with --include, which names the slots itself.)
        argv += ["--num_nodes", str(p.num_nodes), "--num_gpus", str(p.num_ranks)]
    return argv + rank_args


def _check_remote_shell_safe(values: list[str]) -> None:
    """pdsh joins DeepSpeed's remote command into one shell line and quotes only arguments with spaces, so `$(...)`
    in a path would run on every node: refuse such paths instead."""
    for value in values:
        if not re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", value):
            raise UserError("runs.pdsh_unsafe_path", "placement.launcher pdsh runs {value!r} through a shell on every "
                            "node, which would interpret some of its characters; use paths of letters, digits and "
                            "./_- only", value=value)


def all_node_commands(cfg: RunConfig, run_dir: Path, has_gpu: bool = False,
                      include: list[int] | None = None) -> list[list[str]]:
    """One argv per node that must be started by hand (no_ssh), or the single launch argv otherwise."""
    if cfg.placement.launcher == "no_ssh":
        return [node_argv(cfg, run_dir, node_rank=r, has_gpu=has_gpu) for r in range(cfg.placement.num_nodes)]
    return [node_argv(cfg, run_dir, has_gpu=has_gpu, include=include)]


def launch_env(cfg: RunConfig, has_gpu: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.PROJECT_ROOT), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault(ORDER_ENV, "PCI_BUS_ID")  # the ranks number GPUs as NVML and nvidia-smi do (config.hardware)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(paths.CACHE_DIR / "torch_extensions"))  # see warm_deepspeed_ops
    if "OMP_NUM_THREADS" not in env:
        # A node's ranks share its cores: CPU ranks for everything, GPU ranks for DeepSpeed's CPU Adam when the
        # optimizer is offloaded. Left unset, every rank starts a thread per core and all of them slow down.
        env["OMP_NUM_THREADS"] = str(threads_per_rank(len(os.sched_getaffinity(0)), cfg.placement.num_ranks))
    return env


def threads_per_rank(cores: int, ranks_per_node: int) -> int:
    """OpenMP threads for each of a node's ranks: its usable cores (the affinity mask, which Slurm and containers
    narrow) divided among them."""
    return max(1, cores // max(1, ranks_per_node))


def shell_line(argv: list[str]) -> str:
    """For display and scripts only: the argv quoted so a shell would pass it through unchanged."""
    return " ".join(shlex.quote(a) for a in argv)
