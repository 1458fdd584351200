"""The orchestration API every front-end calls: plan a run, create its directory, launch it.

    plan(cfg)    -> Plan: the resolved config, the DeepSpeed dict that will run, lints, the argv of every node,
                    the cluster files and the memory plan; nothing is written
    create_run(cfg) -> run directory (state `queued`), written whole or not at all, after every check passed
    launch(cfg)  -> run directory with its supervisor started; a run that cannot start leaves no directory

The CLI (`plan`, `train`), the Train page and the Runs page's relaunch go through here, so they cannot disagree.
A launch plans once: `launch(cfg, checked=plan)` runs the plan a front-end has already checked and shown (the Train
page's), and plans again only when that plan no longer holds (`still_holds`: another config, changed files, other
hardware). The device locks are taken when the run starts, whichever plan it runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer_core.common import paths
from trainer_core.common.lint import Lint
from trainer_core.config.ds_config import write_json
from trainer_core.config.hardware import Hardware, detect, include_ids, lock_ids
from trainer_core.config.run_config import RunConfig, save_config
from trainer_core.common.errors import Text, UserError
from trainer_core.runs import device_locks, preflight
from trainer_core.runs import protocol
from trainer_core.runs.cluster import NODE_SCRIPT, SLURM_SCRIPT, node_script, slurm_script
from trainer_core.runs.launch import all_node_commands, hostfile_text
from trainer_core.runs.registry import new_run_name, reserve_name, unwritable

if TYPE_CHECKING:
    from trainer_core.config.memory import MemoryPlan


@dataclasses.dataclass
class Plan:
    """What launching a config would do, decided before anything is written."""

    cfg: RunConfig
    """The config as the run will save it: absolute paths, and with `deepspeed.config_file` set, the ZeRO stage
    and offloads that file holds."""
    ds_config: dict[str, Any]
    """The DeepSpeed config the ranks run (the file's when `deepspeed.config_file` is set)."""
    lints: list[Lint]
    """Warnings about the config (errors refuse the plan instead)."""
    n_records: int
    """Usable training records."""
    hardware: Hardware
    """The machine it was planned for."""
    run_dir: Path
    """Where the run would be created (a taken unnamed run gets a suffix at creation)."""
    argv: list[list[str]]
    """The launcher argv of each node that is started by hand (no_ssh), else the single launch argv."""
    cluster_files: dict[str, str]
    """File name -> text: the per-node and Slurm scripts, and the hostfile of a multi-node launcher."""
    config_hash: str = ""
    """Hash of the config it was asked for (before paths were resolved): a launch of another config plans anew."""
    inputs: tuple = ()
    """The files its checks read, as they were before the checks (preflight.input_stamp)."""
    memory: "MemoryPlan | None" = None
    """Per-rank and host memory for this machine (None when not asked for, or not plannable)."""
    memory_problem: Text | None = None
    """Why the memory could not be planned (the model's config could not be read)."""


def hash_config(cfg: RunConfig) -> str:
    return hashlib.sha256(cfg.to_yaml().encode("utf-8")).hexdigest()


def plan(cfg: RunConfig, *, memory: bool = True) -> Plan:
    """Every check a run must pass, and what it would run. Raises UserError naming the first problem."""
    hw = detect()
    preflight.check_method(cfg, hw)
    preflight.check_precision(cfg, hw)
    asked = hash_config(cfg)
    cfg = preflight.resolve_paths(cfg)
    inputs = preflight.input_stamp(cfg)  # before the checks read the files: an edit during them shows at launch
    n_records = preflight.check_files(cfg)
    preflight.check_placement(cfg, hw)
    ds = preflight.deepspeed_dict(cfg, hw)
    lints = preflight.lints(cfg, ds, hw)
    cfg = preflight.with_zero_of(cfg, ds)
    run_dir = paths.runs_root() / new_run_name(cfg)
    named = dataclasses.replace(cfg, name=run_dir.name)
    out = Plan(cfg=cfg, ds_config=ds, lints=lints, n_records=n_records, hardware=hw, run_dir=run_dir,
               argv=all_node_commands(cfg, run_dir, has_gpu=hw.has_gpu, include=include_ids(hw, cfg.placement)),
               cluster_files=cluster_files(named, run_dir), config_hash=asked, inputs=inputs)
    if memory:
        from trainer_core.config.memory import plan_memory

        try:
            out.memory = plan_memory(cfg, hw=hw)
        except UserError as e:
            out.memory_problem = e.text
    return out


def device_busy(cfg: RunConfig, hw: Hardware | None = None) -> Text | None:
    """Why launching `cfg` here would be refused now because a run holds its devices (which device, which run), else
    None. Asked afresh each time a front-end shows a plan: a plan is kept while its inputs hold, a lock is not."""
    hw = hw or detect()
    try:
        keys = device_locks.device_keys(cfg.placement.num_ranks, lock_ids(hw, cfg.placement), hw.has_gpu)
        return device_locks.first_busy(keys)
    except UserError:
        return None  # GPUs this machine lacks, an unusable lock folder: the plan or the launch says so by itself


def cluster_files(cfg: RunConfig, run_dir: Path) -> dict[str, str]:
    """The scripts to start the run on a GPU cluster by hand or with Slurm, and a multi-node launcher's hostfile."""
    files = {NODE_SCRIPT: node_script(cfg, run_dir), SLURM_SCRIPT: slurm_script(cfg, run_dir)}
    if cfg.placement.launcher != "local":
        files[protocol.HOSTFILE] = hostfile_text(cfg)
    return files


def still_holds(p: Plan, cfg: RunConfig) -> bool:
    """Whether plan `p` is still what launching `cfg` would do: planned for this config, on this hardware, and the
    files its checks read unchanged since (the data, the model folder, a DeepSpeed file, a hostfile)."""
    return (p.config_hash == hash_config(cfg) and p.inputs == preflight.input_stamp(p.cfg)
            and p.hardware == detect())


def create_run(cfg: RunConfig, runs_root: Path | None = None, *, checked: Plan | None = None) -> Path:
    """Check everything, then write a complete run directory and return it (state `queued`). `checked`: a plan of
    `cfg` made earlier, written as it is while it still holds (else `cfg` is planned again)."""
    p = checked if checked is not None and still_holds(checked, cfg) else plan(cfg, memory=False)
    return _write_run(p, runs_root or paths.runs_root())


def _write_run(p: Plan, root: Path) -> Path:
    """Assemble the run under a hidden temporary name and rename it into place: a failed check or a crash never
    leaves a half-written run behind."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        name, final = reserve_name(root, p.cfg)
    except OSError as e:
        raise unwritable(root, e) from None
    cfg = dataclasses.replace(p.cfg, name=name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    except OSError as e:
        final.rmdir()
        raise unwritable(root, e) from None
    try:
        save_config(cfg, tmp / protocol.CONFIG)
        write_json(p.ds_config, tmp / protocol.DS_CONFIG)
        for file_name, text in cluster_files(cfg, final).items():
            (tmp / file_name).write_text(text, encoding="utf-8")
            if file_name != protocol.HOSTFILE:
                (tmp / file_name).chmod(0o755)
        protocol.write_json_atomic(tmp / protocol.COMMAND, {
            "argv": all_node_commands(cfg, final, has_gpu=p.hardware.has_gpu,
                                      include=include_ids(p.hardware, cfg.placement)),
            "cwd": str(paths.PROJECT_ROOT),
            "note": "planned commands; the supervisor records the exact argv it ran in manifest.json",
        })
        protocol.write_status(tmp, protocol.Status(state=protocol.QUEUED, created=time.time(), name=name,
                                       nodes_expected=cfg.placement.num_nodes, world_size=cfg.world_size,
                                       lints=[str(x) for x in p.lints]))
        os.rename(tmp, final)  # replaces the empty reserved directory in one step
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        raise
    return final


def launch(cfg: RunConfig, *, checked: Plan | None = None) -> Path:
    """Create the run and start its supervisor (detached). `checked`: the plan of `cfg` a front-end has checked and
    shown; it is the one that runs unless it no longer holds (create_run). When the run cannot start (its devices
    are busy), the run directory is removed again: a refused launch leaves nothing behind."""
    from trainer_core.runs.supervisor import start

    run = create_run(cfg, checked=checked)
    try:
        start(run, detach=True)
    except UserError:
        shutil.rmtree(run, ignore_errors=True)
        raise
    return run
