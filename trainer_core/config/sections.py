"""The sections of a run config (model, data, train, lora, deepspeed, placement, eval): their fields, documented and checked.

Each field carries a docstring (the dashboard's help text and the README point here) and every section validates
itself on construction, raising a coded `UserError` that names the dotted field, e.g.
``train.learning_rate must be > 0 and < 1 (got -1.0)``. `run_config.py` puts the sections together into `RunConfig`
and reads it from YAML and `--set`.
"""

from __future__ import annotations

import contextvars
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer_core.common import paths
from trainer_core.common.errors import Text, UserError, text

DEFAULT_PERSONA = "现在你要扮演皇帝身边的女人--甄嬛"


def short(value: Any) -> str:
    """repr() cut to a readable length: the value goes into a one-line error message."""
    r = repr(value)
    return r if len(r) <= 80 else r[:60] + f"... ({len(r):,} characters)"


# While `collecting()` is active, failed checks are gathered here instead of raised: each section's __post_init__
# then runs every check, so one pass over a config finds every invalid field (issue 31 item 5), without each check
# having to be rewritten as a function returning its problem.
_FOUND: contextvars.ContextVar[list[UserError] | None] = contextvars.ContextVar("config_problems", default=None)


@contextmanager
def collecting():
    """Gather every failed check made inside the block into the yielded list instead of raising the first. The
    objects built inside may be invalid: use them only when the list stays empty."""
    found: list[UserError] = []
    token = _FOUND.set(found)
    try:
        yield found
    finally:
        _FOUND.reset(token)


def _check(ok: bool, message: Text) -> None:
    if not ok:
        found = _FOUND.get()
        if found is None:
            raise UserError(message)
        found.append(UserError(message))


def _between(name: str, value: Any, lo: Any, hi: Any, hi_text: str = "") -> None:
    """The common range check: lo <= value <= hi; `hi_text` shows a large bound readably (65,536)."""
    _check(lo <= value <= hi, text("config.between", "{name} must be between {lo} and {hi} (got {value})",
                                   name=name, lo=lo, hi=hi_text or hi, value=value))


def _one_of(name: str, value: Any, choices: tuple) -> None:
    _check(value in choices, text("config.one_of", "{name} must be one of {choices} (got {value})",
                                  name=name, choices=", ".join(map(str, choices)), value=short(value)))


@dataclass
class ModelArgs:
    path: str = str(paths.STARTER_MODEL_DIR)
    """Local directory of a Hugging Face causal LM (safetensors weights). Hub ids are not downloaded."""

    trust_remote_code: bool = False
    """Run Python code shipped inside the model directory (needed for Qwen-7B-Chat). Only tick for models you trust."""

    def __post_init__(self) -> None:
        _check(bool(self.path.strip()), text("config.model_path_empty",
                                             "{name} is empty: give the directory of a local model", name="model.path"))


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
        _check(bool(self.path.strip()), text("config.data_path_empty",
                                             "{name} is empty: give a dataset file or save_to_disk folder",
                                             name="data.path"))
        _between("data.max_length", self.max_length, *MAX_LENGTH_RANGE)
        _check(0.0 <= self.eval_ratio < 0.5, text("config.in_interval", "{name} must be in {interval} (got {value})",
                                                  name="data.eval_ratio", interval="[0, 0.5)", value=self.eval_ratio))
        _between("data.max_eval_records", self.max_eval_records, 1, 100_000)


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Upper bounds that no real run reaches; past them a typo (10^30) would overflow a tensor or never finish.
MAX_EPOCHS = 10_000
MAX_STEPS = 10**9
MAX_BATCH = 65_536
MAX_SEED = 2**32 - 1
MAX_NODES = 4096
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
METHODS = ("full", "lora", "qlora")


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

    method: str = "full"
    """full (every weight trains), lora (the base stays frozen; small low-rank adapters train, see the lora section)
    or qlora (lora over a base loaded in 4-bit NF4; needs a CUDA GPU and bitsandbytes)."""

    def __post_init__(self) -> None:
        _check(self.epochs > 0 or self.max_steps > 0, text(
            "config.epochs_positive", "{name} must be > 0 unless train.max_steps is set (got {value})",
            name="train.epochs", value=self.epochs))
        _check(self.epochs <= MAX_EPOCHS, text("config.at_most", "{name} must be at most {hi} (got {value})",
                                               name="train.epochs", hi=f"{MAX_EPOCHS:,}", value=f"{self.epochs:g}"))
        _check(self.max_steps == -1 or 0 < self.max_steps <= MAX_STEPS, text(
            "config.max_steps", "{name} must be -1 or a step count from 1 to {hi} (got {value})",
            name="train.max_steps", hi=f"{MAX_STEPS:,}", value=self.max_steps))
        _check(0 < self.learning_rate < 1, text("config.learning_rate", "{name} must be > 0 and < 1 (got {value})",
                                                name="train.learning_rate", value=self.learning_rate))
        _one_of("train.lr_scheduler", self.lr_scheduler, SCHEDULERS)
        _check(0 <= self.warmup_ratio < 1, text("config.in_interval", "{name} must be in {interval} (got {value})",
                                                name="train.warmup_ratio", interval="[0, 1)", value=self.warmup_ratio))
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            _check(value >= 0, text("config.not_negative", "{name} must be >= 0 (got {value})",
                                    name=f"train.{name}", value=value))
        _between("train.micro_batch_size", self.micro_batch_size, 1, MAX_BATCH, f"{MAX_BATCH:,}")
        _between("train.gradient_accumulation", self.gradient_accumulation, 1, MAX_BATCH, f"{MAX_BATCH:,}")
        _one_of("train.precision", self.precision, PRECISIONS)
        _between("train.logging_steps", self.logging_steps, 1, MAX_STEPS, f"{MAX_STEPS:,}")
        _between("train.save_steps", self.save_steps, 0, MAX_STEPS, f"{MAX_STEPS:,}")
        _between("train.save_total_limit", self.save_total_limit, 1, 1000)
        _between("train.eval_steps", self.eval_steps, 0, MAX_STEPS, f"{MAX_STEPS:,}")
        # numpy, torch and Python's random all take a 32-bit unsigned seed; anything else fails after start-up.
        _between("train.seed", self.seed, 0, MAX_SEED)
        _one_of("train.method", self.method, METHODS)


MODULE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")


@dataclass
class LoraArgs:
    rank: int = 16
    """Rank r of each adapter (its matrices are r x in and out x r): higher learns more and stores more."""

    alpha: float = 32.0
    """Scale of the adapter's update: it is multiplied by alpha / rank (alpha / sqrt(rank) with use_rslora)."""

    dropout: float = 0.05
    """Dropout on the adapter's input during training (0 disables it)."""

    target_modules: list[str] = field(default_factory=list)
    """Names (or name suffixes) of the linear layers that get adapters; empty: every linear layer inside the
    model's blocks, found from the model itself (the output head and the embeddings never)."""

    use_rslora: bool = False
    """Rank-stabilised LoRA: scale by alpha / sqrt(rank), which keeps high ranks learning."""

    use_dora: bool = False
    """DoRA: also learn each weight's magnitude; slower, sometimes better at low rank."""

    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full and saved beside the adapter (e.g. lm_head when the vocabulary's use changes); they
    make the adapter as large as those modules."""

    def __post_init__(self) -> None:
        _between("lora.rank", self.rank, 1, 4096)
        _check(0 < self.alpha <= 1e6, text("config.lora_alpha", "{name} must be > 0 (got {value})",
                                           name="lora.alpha", value=self.alpha))
        _check(0 <= self.dropout < 1, text("config.in_interval", "{name} must be in {interval} (got {value})",
                                           name="lora.dropout", interval="[0, 1)", value=self.dropout))
        for name in ("target_modules", "modules_to_save"):
            bad = [m for m in getattr(self, name) if not MODULE_NAME_RE.fullmatch(m)]
            _check(not bad, text("config.module_names", "{name} must be module names such as q_proj or "
                                 "model.layers.0.mlp (got {value})", name=f"lora.{name}", value=short(bad[:1])))


OFFLOAD_DEVICES = ("none", "cpu", "nvme")
# Offload writes swap files into nvme_path; these trees belong to the operating system, never to a run.
SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys",
               "/usr", "/var", "/root")
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr")


def system_dir(path: str) -> bool:
    """True for the OS's own directories (and anything inside /etc, /usr, /proc, ...)."""
    p = Path(path)
    for candidate in {p, p.resolve()}:
        s = str(candidate)
        if s in SYSTEM_DIRS or any(s.startswith(t + "/") for t in SYSTEM_TREES):
            return True
    return False


def not_absolute(name: str, path: str) -> Text:
    return text("config.not_absolute", "{name} must be an absolute path (got {value})", name=name, value=short(path))


def is_system_dir(name: str, path: str) -> Text:
    return text("config.system_dir", "{name} {path} is a system directory; give a directory of your own on a fast "
                "local disk", name=name, path=path)


def offload_stage_problems(stage: Any, offload_optimizer: str, offload_param: str, section: str) -> list[Text]:
    """The one rule between the ZeRO stage and offloading, for the form's `deepspeed` section and a DeepSpeed
    file's `zero_optimization` block alike (`section` names the fields): parameters can be offloaded under ZeRO-3
    only, the optimizer under any ZeRO stage but 0. Devices are as given ("none" is no offload)."""
    out = []
    if offload_param != "none" and stage != 3:
        out.append(text("config.offload_param_stage",
                        "{name} needs {stage_field} 3 (got stage {stage}); use offload_optimizer for stages 1-2",
                        name=f"{section}.offload_param", stage_field=f"{section}.stage", stage=short(stage)))
    if offload_optimizer != "none" and stage == 0:
        out.append(text("config.offload_optimizer_stage",
                        "{name} needs {stage_field} >= 1 (stage 0 has no ZeRO optimizer to offload)",
                        name=f"{section}.offload_optimizer", stage_field=f"{section}.stage"))
    return out


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
        _check(self.stage in (0, 1, 2, 3), text("config.stage", "{name} must be 0, 1, 2 or 3 (got {value})",
                                                name="deepspeed.stage", value=self.stage))
        _one_of("deepspeed.offload_optimizer", self.offload_optimizer, OFFLOAD_DEVICES)
        _one_of("deepspeed.offload_param", self.offload_param, OFFLOAD_DEVICES)
        for problem in offload_stage_problems(self.stage, self.offload_optimizer, self.offload_param, "deepspeed"):
            _check(False, problem)
        uses_nvme = "nvme" in (self.offload_optimizer, self.offload_param)
        _check(not uses_nvme or bool(self.nvme_path), text(
            "config.nvme_path_required", "{name} is required when offloading to nvme", name="deepspeed.nvme_path"))
        if self.nvme_path:
            _check(Path(self.nvme_path).is_absolute(), not_absolute("deepspeed.nvme_path", self.nvme_path))
            _check(not system_dir(self.nvme_path), is_system_dir("deepspeed.nvme_path", self.nvme_path))


LAUNCHERS = ("local", "pdsh", "ssh", "no_ssh")


@dataclass
class PlacementArgs:
    num_ranks: int = 1
    """Processes per node (one per GPU; on a CPU-only machine, CPU ranks)."""

    gpus: list[int] = field(default_factory=list)
    """GPU ids to use on each node (empty: the first num_ranks GPUs). On one node they count within
    CUDA_VISIBLE_DEVICES (or Slurm's allocation) when it is set, as `cuda:<i>` does; several nodes: each node's own
    ids."""

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
        _between("placement.num_ranks", self.num_ranks, 1, 1024)
        self._check_gpus()
        _one_of("placement.launcher", self.launcher, LAUNCHERS)
        _between("placement.num_nodes", self.num_nodes, 1, MAX_NODES)
        _check(0 <= self.node_rank < self.num_nodes, text(
            "config.in_interval", "{name} must be in {interval} (got {value})",
            name="placement.node_rank", interval=f"[0, {self.num_nodes})", value=self.node_rank))
        _between("placement.master_port", self.master_port, 1024, 65535)
        # No leading "-": the launcher would read the address as an option.
        _check(bool(re.fullmatch(r"[A-Za-z0-9:][A-Za-z0-9.:_-]*", self.master_addr)), text(
            "config.master_addr", "{name} must be a host name or IP address (got {value})",
            name="placement.master_addr", value=short(self.master_addr)))
        _check(self.launcher != "local" or self.num_nodes == 1, text(
            "config.local_nodes",
            "{name} is {value} but placement.launcher is local: use pdsh, ssh or no_ssh for several nodes",
            name="placement.num_nodes", value=self.num_nodes))
        _check(self.launcher == "local" or bool(self.hostfile.strip()), text(
            "config.hostfile_required",
            "{name} is required with placement.launcher {launcher} (one 'host slots=N' line per node)",
            name="placement.hostfile", launcher=self.launcher))

    def _check_gpus(self) -> None:
        gpus, name = self.gpus, "placement.gpus"
        _check(all(isinstance(g, int) and g >= 0 for g in gpus), text(
            "config.gpu_ids", "{name} must be non-negative GPU ids (got {value})", name=name, value=short(gpus)))
        _check(len(set(gpus)) == len(gpus), text(
            "config.gpu_twice", "{name} lists a GPU twice (got {value})", name=name, value=short(gpus)))
        _check(not gpus or len(gpus) == self.num_ranks, text(
            "config.gpus_count", "{name} has {count} ids but placement.num_ranks is {ranks}: make them agree",
            name=name, count=len(gpus), ranks=self.num_ranks))
        _check(all(g <= 1023 for g in gpus), text(
            "config.gpu_id_high", "{name} must be GPU ids below 1024 (got {value})", name=name, value=short(gpus)))


@dataclass
class EvalArgs:
    persona_at_end: bool = False
    """When training completes, evaluate the final model and the base model on the persona (as `evaluate RUN
    --base`), in the background; results go to the run's eval/ folder, a failure to the evaluation's own status."""

    max_records: int = 200
    """Held-out records that evaluation scores at most."""

    max_new_tokens: int = 128
    """Longest reply of that evaluation, in tokens."""

    def __post_init__(self) -> None:
        _between("eval.max_records", self.max_records, 1, 10_000, "10,000")
        _between("eval.max_new_tokens", self.max_new_tokens, 1, 4096)
