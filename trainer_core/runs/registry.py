"""Create run directories (after every check passes) and list existing runs.

A run directory appears complete or not at all: it is assembled under a hidden temporary name and renamed into
place, so a failed check or a crash never leaves a half-written run behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

from trainer_core import paths
from trainer_core.runs import protocol as rd
from trainer_core.runs.cluster import write_cluster_scripts
from trainer_core.config.run_config import RunConfig, save_config
from trainer_core.config.ds_config import Lint, build_ds_config, lint_run, write_json
from trainer_core.errors import UserError
from trainer_core.config.hardware import detect
from trainer_core.runs.launch import HOSTFILE, all_node_commands, hostfile_text
from trainer_core.models.local import check_model_dir
from trainer_core.models.qwen1_import import lint_imported_length


@dataclasses.dataclass
class Preflight:
    cfg: RunConfig
    ds_config: dict
    lints: list
    n_records: int


def resolve_paths(cfg: RunConfig) -> RunConfig:
    """Absolute model and data paths, so the run does not depend on the directory it is launched from."""
    model = Path(cfg.model.path).expanduser()
    data = Path(cfg.data.path).expanduser()
    model = model if model.is_absolute() else (paths.PROJECT_ROOT / model)
    data = data if data.is_absolute() else (paths.PROJECT_ROOT / data)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, path=str(model.resolve())),
        data=dataclasses.replace(cfg.data, path=str(data.resolve())),
    )


def preflight(cfg: RunConfig) -> Preflight:
    """Every check a run must pass before anything is written or started."""
    cfg = resolve_paths(cfg)
    check_model_dir(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    if not Path(cfg.data.path).exists():
        raise UserError(f"data.path {cfg.data.path} not found: upload a dataset or pick the sample")
    n_records = check_answers_fit(cfg)
    hw = detect()
    if hw.has_gpu and cfg.placement.launcher == "local":
        wanted = cfg.placement.gpus or list(range(cfg.placement.num_ranks))
        missing = [g for g in wanted if g >= len(hw.gpus)]
        if missing:
            raise UserError(f"placement.gpus asks for GPU {missing} but this machine has {len(hw.gpus)} GPUs")
    elif cfg.placement.launcher == "local" and cfg.placement.num_ranks > hw.cpu_cores:
        # Each CPU rank runs its own torch threads; more ranks than cores only thrash (1024 would fork-bomb).
        raise UserError(f"placement.num_ranks {cfg.placement.num_ranks} is more than this machine's "
                        f"{hw.cpu_cores} CPU cores and it has no GPU; use at most {hw.cpu_cores}")
    if cfg.placement.launcher != "local":
        hostfile_text(cfg)
    ds = build_ds_config(cfg, on_gpu=hw.has_gpu)
    lints = lint_run(cfg, ds, gpu_supports_bf16=hw.has_gpu and all(g.bf16 for g in hw.gpus))
    lints += lint_learning_rate(cfg)
    lints += lint_imported_length(cfg.model.path, cfg.data.max_length)
    errors = [str(x) for x in lints if x.level == "error"]
    if errors:
        raise UserError("DeepSpeed config problems: " + "; ".join(errors))
    return Preflight(cfg=cfg, ds_config=ds, lints=lints, n_records=n_records)


# Highest learning rate that full fine-tuning of a model of at least this many parameters usually tolerates. The form
# starts from the starter model's quickstart (lr 8e-3, right for a random 10M model), and a user who only switches
# the model to a pretrained 7B would erase what it knows; published full fine-tuning recipes for 7B chat models use
# 1e-5 to 2e-5 (Qwen's finetune_ds.sh, LLaMA-Factory's full-SFT examples).
LR_LIMITS = ((1e9, 1e-4), (1e8, 1e-3))


def lint_learning_rate(cfg: RunConfig) -> list[Lint]:
    """A warning when train.learning_rate is far above what a model of this size is fine-tuned with."""
    from trainer_core.config.memory import model_shape

    try:
        params = model_shape(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code).params
    except UserError:
        return []  # the memory plan reports what is wrong with the model's config
    limit = next((lr for size, lr in LR_LIMITS if params >= size), None)
    if limit is None or cfg.train.learning_rate <= limit:
        return []
    return [Lint("warning", "learning-rate-high",
                 f"train.learning_rate {cfg.train.learning_rate:g} is far above what full fine-tuning of a "
                 f"{params / 1e9:.1f}B-parameter model tolerates (usually 1e-5 to 2e-5; above {limit:g} it tends to "
                 "erase what the model already knows); configs/qwen_7b_4x24gb.yaml uses 1e-5")]


def check_answers_fit(cfg: RunConfig) -> int:
    """Encode the dataset as training will (into the cache the trainer then reads) and refuse a run without a
    usable record, or in which no record keeps an answer token after truncation (it would fail after start-up).
    Returns the number of usable records."""
    from trainer_core.data.encoded_set import encode_file
    from trainer_core.models.local import load_tokenizer

    tok = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    enc = encode_file(cfg.data.path, tok, persona=cfg.data.persona, max_length=cfg.data.max_length)
    if len(enc) == 0:
        first = f"; first problem: {enc.first_error}" if enc.first_error else ""
        raise UserError(f"data.path {cfg.data.path} has no usable records{first}")
    if not enc.n_labels.any():
        raise UserError(f"data.max_length {cfg.data.max_length} cuts off every answer (prompts reach "
                        f"{int(enc.lengths.max())} tokens with the persona); raise data.max_length or shorten "
                        "data.persona")
    return len(enc)


def new_run_name(cfg: RunConfig) -> str:
    return cfg.name or time.strftime("run-%Y%m%d-%H%M%S")


def create_run(cfg: RunConfig, runs_root: Path | None = None) -> Path:
    """Check everything, then write a complete run directory and return it (state `queued`)."""
    pf = preflight(cfg)
    root = runs_root or paths.runs_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        name, final = reserve_name(root, pf.cfg)
    except OSError as e:
        raise _unwritable(root, e) from None
    cfg = dataclasses.replace(pf.cfg, name=name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    except OSError as e:
        final.rmdir()
        raise _unwritable(root, e) from None
    try:
        save_config(cfg, tmp / rd.CONFIG)
        write_json(pf.ds_config, tmp / rd.DS_CONFIG)
        if cfg.placement.launcher != "local":
            (tmp / HOSTFILE).write_text(hostfile_text(cfg), encoding="utf-8")
        write_cluster_scripts(cfg, final, target=tmp)
        rd.write_json_atomic(tmp / rd.COMMAND, {
            "argv": all_node_commands(cfg, final, has_gpu=detect().has_gpu),
            "cwd": str(paths.PROJECT_ROOT),
            "note": "planned commands; the supervisor records the exact argv it ran in manifest.json",
        })
        rd.write_status(tmp, rd.Status(state=rd.QUEUED, created=time.time(), name=name,
                                       nodes_expected=cfg.placement.num_nodes, world_size=cfg.world_size,
                                       lints=[str(x) for x in pf.lints]))
        os.rename(tmp, final)  # replaces the empty reserved directory in one step
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        raise
    return final


def _unwritable(root: Path, e: OSError) -> UserError:
    return UserError(f"the runs folder {root} is not writable ({e.strerror}); make it writable or set "
                     "TRAINER_RUNS_ROOT to a folder that is")


def reserve_name(root: Path, cfg: RunConfig) -> tuple[str, Path]:
    """Claim a run name with an atomic mkdir, so two launches in the same second (two tabs, two terminals) never
    pick the same directory; an empty directory is invisible to list_runs until the run is renamed over it."""
    base = new_run_name(cfg)
    for attempt in range(1000):
        name = base if attempt == 0 else f"{base}-{attempt + 1}"
        try:
            (root / name).mkdir()
            return name, root / name
        except FileExistsError:
            if cfg.name:
                raise UserError(f"name: a run called {base!r} already exists in {root}; pick another name") from None
    raise UserError(f"could not find a free run name next to {base!r} in {root}")


def list_runs(runs_root: Path | None = None) -> list[Path]:
    root = runs_root or paths.runs_root()
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / rd.CONFIG).is_file()]
    return sorted(runs, key=lambda p: (p / rd.CONFIG).stat().st_mtime, reverse=True)


def resolve_run_dir(ref: str | Path) -> Path:
    """A run given as a path or as a name under the runs root."""
    p = Path(ref)
    if not p.is_dir():
        p = paths.runs_root() / str(ref)
    if not (p / rd.CONFIG).is_file():
        raise UserError(f"{ref} is not a run directory (no {rd.CONFIG}); `python -m trainer_core runs` lists them")
    return p.resolve()


def delete_run(run: Path) -> None:
    """Remove a run directory; refused while any of its processes is alive."""
    from trainer_core.runs.state import read_state

    state = read_state(run)
    if state.alive:
        raise UserError(f"run {run.name} is {state.state}; stop it before deleting")
    root = paths.runs_root().resolve()
    if run.resolve().parent != root:
        raise UserError(f"{run} is not inside the runs folder {root}")
    shutil.rmtree(run)
