"""The one typed run config: it drives the dashboard form, the CLI and the trainer.

A config is a tree of dataclasses. Each field carries a docstring (read by the UI for help text) and every section
validates itself on construction, raising `UserError` with the dotted name of the offending field, e.g.
``train.learning_rate must be > 0 (got -1.0)``. Configs are stored as YAML; `--set key=value` overrides any field.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer_core import paths
from trainer_core.errors import UserError

# libyaml's safe loader when PyYAML was built with it: 10x faster, and the Runs page parses every run's config.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DEFAULT_PERSONA = "现在你要扮演皇帝身边的女人--甄嬛"
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: "$" would let a trailing newline in


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise UserError(f"{name} {message}")


@dataclass
class ModelArgs:
    path: str = str(paths.STARTER_MODEL_DIR)
    """Local directory of a Hugging Face causal LM (safetensors weights). Hub ids are not downloaded."""

    trust_remote_code: bool = False
    """Run Python code shipped inside the model directory (needed for Qwen-7B-Chat). Only tick for models you trust."""

    def __post_init__(self) -> None:
        _check(bool(self.path.strip()), "model.path", "is empty: give the directory of a local model")


MAX_LENGTH_RANGE = (16, 131072)


@dataclass
class DataArgs:
    path: str = str(paths.SAMPLE_DATA)
    """Dataset file (.json array, .jsonl, .parquet or .csv) or a folder written by datasets' save_to_disk, of
    instruction/input/output, messages or ShareGPT records."""

    persona: str = DEFAULT_PERSONA
    """System prompt the model learns to play; used as the system turn of every record without one."""

    max_length: int = 512
    """Tokens per training sequence (prompt + answer). Longer records are truncated and reported."""

    eval_ratio: float = 0.0
    """Fraction of records held out for evaluation (0 disables evaluation)."""

    max_eval_records: int = 200
    """At most this many records are held out, however large the data (the rest train): each evaluation pass and
    the one at the end of training stay short."""

    packing: bool = True
    """Pack several short records into one sequence (no attention across records) for speed."""

    def __post_init__(self) -> None:
        _check(bool(self.path.strip()), "data.path", "is empty: give a dataset file or save_to_disk folder")
        lo, hi = MAX_LENGTH_RANGE
        _check(lo <= self.max_length <= hi, "data.max_length", f"must be between {lo} and {hi} (got {self.max_length})")
        _check(0.0 <= self.eval_ratio < 0.5, "data.eval_ratio", f"must be in [0, 0.5) (got {self.eval_ratio})")
        _check(1 <= self.max_eval_records <= 100_000, "data.max_eval_records",
               f"must be between 1 and 100000 (got {self.max_eval_records})")


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Upper bounds that no real run reaches; past them a typo (10^30) would overflow a tensor or never finish.
MAX_EPOCHS = 10_000
MAX_STEPS = 10**9
MAX_BATCH = 65_536
MAX_SEED = 2**32 - 1
MAX_NODES = 4096
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")


@dataclass
class TrainArgs:
    epochs: float = 3.0
    """Passes over the training data. Ignored when max_steps > 0."""

    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the full epochs)."""

    learning_rate: float = 1e-4
    """Peak learning rate of AdamW."""

    lr_scheduler: str = "cosine"
    """Learning-rate schedule after warm-up: cosine, linear, constant or constant_with_warmup."""

    warmup_ratio: float = 0.03
    """Fraction of the steps spent warming the learning rate up from 0."""

    weight_decay: float = 0.0
    """AdamW weight decay."""

    micro_batch_size: int = 1
    """Sequences per rank per forward pass."""

    gradient_accumulation: int = 1
    """Micro-batches accumulated before each optimizer step."""

    max_grad_norm: float = 1.0
    """Gradient clipping threshold (0 disables clipping)."""

    precision: str = "auto"
    """auto (bf16 on GPUs that support it, fp16 with loss scaling on older GPUs, fp32 on CPU), bf16, fp16 or fp32."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""

    logging_steps: int = 1
    """Write a metrics line every N optimizer steps."""

    save_steps: int = 100
    """Save a checkpoint every N optimizer steps (0: only at the end)."""

    save_total_limit: int = 2
    """How many complete checkpoints to keep (oldest deleted first)."""

    eval_steps: int = 0
    """Evaluate every N steps (0: once per epoch when data.eval_ratio > 0)."""

    seed: int = 42
    """Random seed for initialisation, shuffling and the eval split."""

    def __post_init__(self) -> None:
        _check(self.epochs > 0 or self.max_steps > 0, "train.epochs", f"must be > 0 unless train.max_steps is set (got {self.epochs})")
        _check(self.epochs <= MAX_EPOCHS, "train.epochs", f"must be at most {MAX_EPOCHS:,} (got {self.epochs:g})")
        _check(self.max_steps == -1 or 0 < self.max_steps <= MAX_STEPS, "train.max_steps",
               f"must be -1 or a step count from 1 to {MAX_STEPS:,} (got {self.max_steps})")
        _check(0 < self.learning_rate < 1, "train.learning_rate", f"must be > 0 and < 1 (got {self.learning_rate})")
        _check(self.lr_scheduler in SCHEDULERS, "train.lr_scheduler", f"must be one of {', '.join(SCHEDULERS)} (got {self.lr_scheduler!r})")
        _check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1) (got {self.warmup_ratio})")
        _check(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0 (got {self.weight_decay})")
        _check(1 <= self.micro_batch_size <= MAX_BATCH, "train.micro_batch_size",
               f"must be between 1 and {MAX_BATCH:,} (got {self.micro_batch_size})")
        _check(1 <= self.gradient_accumulation <= MAX_BATCH, "train.gradient_accumulation",
               f"must be between 1 and {MAX_BATCH:,} (got {self.gradient_accumulation})")
        _check(self.max_grad_norm >= 0, "train.max_grad_norm", f"must be >= 0 (got {self.max_grad_norm})")
        _check(self.precision in PRECISIONS, "train.precision", f"must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        _check(1 <= self.logging_steps <= MAX_STEPS, "train.logging_steps", f"must be between 1 and {MAX_STEPS:,} (got {self.logging_steps})")
        _check(0 <= self.save_steps <= MAX_STEPS, "train.save_steps", f"must be between 0 and {MAX_STEPS:,} (got {self.save_steps})")
        _check(1 <= self.save_total_limit <= 1000, "train.save_total_limit", f"must be between 1 and 1000 (got {self.save_total_limit})")
        _check(0 <= self.eval_steps <= MAX_STEPS, "train.eval_steps", f"must be between 0 and {MAX_STEPS:,} (got {self.eval_steps})")
        # numpy, torch and Python's random all take a 32-bit unsigned seed; anything else fails after start-up.
        _check(0 <= self.seed <= MAX_SEED, "train.seed", f"must be between 0 and {MAX_SEED} (got {self.seed})")


OFFLOAD_DEVICES = ("none", "cpu", "nvme")
# Offload writes swap files into nvme_path; these trees belong to the operating system, never to a run.
SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys",
               "/usr", "/var", "/root")
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr")


def system_dir(path: str) -> bool:
    """True for the OS's own directories (and anything inside /etc, /usr, /proc, ...)."""
    p = Path(path)
    for candidate in {p, p.resolve()}:
        text = str(candidate)
        if text in SYSTEM_DIRS or any(text.startswith(t + "/") for t in SYSTEM_TREES):
            return True
    return False


@dataclass
class DeepSpeedArgs:
    stage: int = 2
    """ZeRO stage: 0 off, 1 shards optimizer states, 2 also gradients, 3 also parameters."""

    offload_optimizer: str = "cpu"
    """Where optimizer states live: none (accelerator), cpu (host RAM, DeepSpeedCPUAdam) or nvme."""

    offload_param: str = "none"
    """Where parameters live between uses (ZeRO-3 only): none, cpu or nvme."""

    nvme_path: str = ""
    """Directory on a fast local disk for nvme offload."""

    config_file: str = ""
    """Use this DeepSpeed JSON instead of the generated one (it is linted; "auto" values are filled by the trainer)."""

    def __post_init__(self) -> None:
        _check(self.stage in (0, 1, 2, 3), "deepspeed.stage", f"must be 0, 1, 2 or 3 (got {self.stage})")
        _check(self.offload_optimizer in OFFLOAD_DEVICES, "deepspeed.offload_optimizer", f"must be one of {', '.join(OFFLOAD_DEVICES)} (got {self.offload_optimizer!r})")
        _check(self.offload_param in OFFLOAD_DEVICES, "deepspeed.offload_param", f"must be one of {', '.join(OFFLOAD_DEVICES)} (got {self.offload_param!r})")
        _check(self.offload_param == "none" or self.stage == 3, "deepspeed.offload_param",
               f"needs deepspeed.stage 3 (got stage {self.stage}); use offload_optimizer for stages 1-2")
        _check(self.offload_optimizer == "none" or self.stage >= 1, "deepspeed.offload_optimizer",
               "needs deepspeed.stage >= 1 (stage 0 has no ZeRO optimizer to offload)")
        uses_nvme = "nvme" in (self.offload_optimizer, self.offload_param)
        _check(not uses_nvme or bool(self.nvme_path), "deepspeed.nvme_path", "is required when offloading to nvme")
        if self.nvme_path:
            _check(Path(self.nvme_path).is_absolute(), "deepspeed.nvme_path",
                   f"must be an absolute path (got {self.nvme_path!r})")
            _check(not system_dir(self.nvme_path), "deepspeed.nvme_path",
                   f"{self.nvme_path} is a system directory; give a directory of your own on a fast local disk")


LAUNCHERS = ("local", "pdsh", "ssh", "no_ssh")


@dataclass
class PlacementArgs:
    num_ranks: int = 1
    """Processes per node (one per GPU; on a CPU-only machine, CPU ranks)."""

    gpus: list[int] = field(default_factory=list)
    """GPU ids to use on each node (empty: the first num_ranks GPUs)."""

    launcher: str = "local"
    """local (one machine); pdsh or ssh (DeepSpeed starts every node from this one over ssh, through pdsh); no_ssh
    (one launcher per node, started by you or by Slurm, meeting at master_addr)."""

    hostfile: str = ""
    """Path to a DeepSpeed hostfile, or the lines themselves ("host1 slots=4; host2 slots=4")."""

    num_nodes: int = 1
    """Nodes taking part (no_ssh: how many launchers will join)."""

    node_rank: int = 0
    """This node's rank for the no_ssh launcher (0 is the master)."""

    master_addr: str = "127.0.0.1"
    """Address of node 0 that every rank connects to."""

    master_port: int = 29500
    """TCP port on the master for the rendezvous."""

    def __post_init__(self) -> None:
        _check(1 <= self.num_ranks <= 1024, "placement.num_ranks", f"must be between 1 and 1024 (got {self.num_ranks})")
        _check(all(isinstance(g, int) and g >= 0 for g in self.gpus), "placement.gpus", f"must be non-negative GPU ids (got {self.gpus})")
        _check(len(set(self.gpus)) == len(self.gpus), "placement.gpus", f"lists a GPU twice (got {self.gpus})")
        _check(not self.gpus or len(self.gpus) == self.num_ranks, "placement.gpus",
               f"has {len(self.gpus)} ids but placement.num_ranks is {self.num_ranks}: make them agree")
        _check(self.launcher in LAUNCHERS, "placement.launcher", f"must be one of {', '.join(LAUNCHERS)} (got {self.launcher!r})")
        _check(1 <= self.num_nodes <= MAX_NODES, "placement.num_nodes", f"must be between 1 and {MAX_NODES} (got {self.num_nodes})")
        _check(all(g <= 1023 for g in self.gpus), "placement.gpus", f"must be GPU ids below 1024 (got {self.gpus})")
        _check(0 <= self.node_rank < self.num_nodes, "placement.node_rank", f"must be in [0, {self.num_nodes}) (got {self.node_rank})")
        _check(1024 <= self.master_port <= 65535, "placement.master_port", f"must be between 1024 and 65535 (got {self.master_port})")
        # No leading "-": the launcher would read the address as an option.
        _check(bool(re.fullmatch(r"[A-Za-z0-9:][A-Za-z0-9.:_-]*", self.master_addr)), "placement.master_addr",
               f"must be a host name or IP address (got {self.master_addr!r})")
        _check(self.launcher != "local" or self.num_nodes == 1, "placement.num_nodes",
               f"is {self.num_nodes} but placement.launcher is local: use pdsh, ssh or no_ssh for several nodes")
        _check(self.launcher == "local" or bool(self.hostfile.strip()), "placement.hostfile",
               f"is required with placement.launcher {self.launcher} (one 'host slots=N' line per node)")


@dataclass
class RunConfig:
    name: str = ""
    """Run name (letters, digits, . _ -); empty: generated from the time."""

    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    deepspeed: DeepSpeedArgs = field(default_factory=DeepSpeedArgs)
    placement: PlacementArgs = field(default_factory=PlacementArgs)

    def __post_init__(self) -> None:
        _check(not self.name or bool(RUN_NAME_RE.fullmatch(self.name)), "name",
               f"may only hold letters, digits, '.', '_' and '-' and start with a letter or digit (got {self.name!r})")

    @property
    def world_size(self) -> int:
        return self.placement.num_ranks * self.placement.num_nodes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False)


SECTIONS: dict[str, type] = {k: t for k, t in typing.get_type_hints(RunConfig).items() if dataclasses.is_dataclass(t)}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _short(value: Any) -> str:
    """repr() cut to a readable length: the value goes into a one-line error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text):,} characters)"


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Check a YAML value against a field type; ints are accepted where floats are expected."""
    origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if isinstance(value, (int, str)) and not isinstance(value, bool) and item is int:
            # "0,1,3" or a single id, the way people type GPU lists.
            value = [v for v in str(value).replace(" ", "").split(",") if v != ""]
        if not isinstance(value, list):
            raise UserError(f"{name} must be a list (got {type(value).__name__} {_short(value)})")
        return [_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{name} must be true or false (got {_short(value)})")
    if typ is int:
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{name} must be a whole number (got {_short(value)})")
    if typ is float:
        number = None
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        if number is None:
            raise UserError(f"{name} must be a number (got {_short(value)})")
        if not math.isfinite(number):  # inf epochs would never end; nan fails no comparison-based check
            raise UserError(f"{name} must be a finite number (got {_short(value)})")
        return number
    if typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{name} must be text (got {_short(value)})")
    raise AssertionError(f"unsupported field type {typ} for {name}")


# Names people bring from other tools (the tutorial's train.sh, HF TrainingArguments) -> our field.
ALIASES = {"lr": "learning_rate", "batch_size": "micro_batch_size", "per_device_train_batch_size": "micro_batch_size",
           "gradient_accumulation_steps": "gradient_accumulation", "num_train_epochs": "epochs",
           "zero_stage": "stage", "max_len": "max_length", "system": "persona", "model_path": "path"}


def _unknown_key(name: str, choices: list[str]) -> UserError:
    prefix, _, leaf = name.rpartition(".")
    alias = f"{prefix}.{ALIASES[leaf]}" if prefix and leaf in ALIASES else ALIASES.get(leaf)
    # Compare field names only: the shared "section." prefix would make any key look close to some field.
    leaves = {c.rpartition(".")[2]: c for c in choices}
    close = [alias] if alias in choices else [leaves[m] for m in difflib.get_close_matches(leaf, leaves, n=1)]
    hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(sorted(choices))})"
    return UserError(f"unknown config key {name!r}{hint}")


def _build_section(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{prefix} must be a mapping of keys to values (got {raw!r})")
    types = _field_types(cls)
    kwargs = {}
    for key, value in raw.items():
        name = f"{prefix}.{key}"
        if key not in types:
            raise _unknown_key(name, [f"{prefix}.{k}" for k in types])
        kwargs[key] = _coerce(value, types[key], name)
    return cls(**kwargs)


def config_from_dict(raw: Any) -> RunConfig:
    """Build and validate a RunConfig from plain data (parsed YAML)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("the config must be a YAML mapping with keys like model, data, train, deepspeed, placement")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "name":
            kwargs["name"] = _coerce(value if value is not None else "", str, "name")
        elif key in SECTIONS:
            kwargs[key] = _build_section(SECTIONS[key], value, key)
        else:
            raise _unknown_key(str(key), ["name", *SECTIONS])
    return RunConfig(**kwargs)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.learning_rate=2e-5` -> (["train", "learning_rate"], 2e-5)."""
    if "=" not in item:
        raise UserError(f"--set {item!r} must look like key=value, e.g. train.learning_rate=2e-5")
    key, text = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise UserError(f"--set {item!r} has no key before '='")
    try:
        value = yaml.load(text, Loader=SAFE_LOADER) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    except RecursionError:  # the pure-Python loader (PyYAML without libyaml) recurses per nesting level
        raise UserError(f"--set {key.strip()} value is nested too deeply; give a plain value") from None
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `key=value` override applied (dotted keys for nested sections)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for item in overrides:
        keys, value = parse_override(item)
        if keys == ["name"]:
            out["name"] = item.split("=", 1)[1]  # a run called "yes" or "2024" stays text
            continue
        if len(keys) == 1:
            out[keys[0]] = value
            continue
        if len(keys) != 2:
            raise UserError(f"--set key {'.'.join(keys)!r} is too deep: use section.field, e.g. train.epochs=2")
        if out.get(keys[0]) is None:  # absent, or an empty `train:` in the YAML
            out[keys[0]] = {}
        section = out[keys[0]]
        if not isinstance(section, dict):
            raise UserError(f"--set {keys[0]} is not a section")
        # Text fields keep exactly what was typed (a persona of "123" stays text).
        cls = SECTIONS.get(keys[0])
        if cls is not None and _field_types(cls).get(keys[1]) is str:
            value = item.split("=", 1)[1]
        section[keys[1]] = value
    return out


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config (or start from defaults when path is None) and apply --set overrides."""
    raw: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} not found: pass an existing .yaml file, e.g. configs/quickstart.yaml")
        try:
            raw = yaml.load(p.read_text(encoding="utf-8"), Loader=SAFE_LOADER) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UserError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        except RecursionError:
            raise UserError(f"config file {p} is nested too deeply; a run config has two levels") from None
        if not isinstance(raw, dict):
            raise UserError(f"config file {p} must hold a mapping (model:, data:, train:, ...), not {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, list(overrides)))


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(cfg.to_yaml(), encoding="utf-8")


def field_help(section: str, name: str) -> str:
    """The docstring written under a field, for UI help text and `--help`."""
    cls = SECTIONS.get(section, RunConfig)
    return _field_docs(cls).get(name, "")


def _field_docs(cls: type) -> dict[str, str]:
    """Read the string literal placed right after each field assignment in the class body."""
    tree = ast.parse(inspect.getsource(cls).lstrip())
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = nxt.value.value
    return docs
