"""The run directory: the only channel between the dashboard, the CLI, the supervisor and the trainer.

Everything a process writes into a run directory, or reads from one, is named and typed here; no other module
spells a file name, a state or a status field by hand.

Layout of runs/<name>/:
  config.yaml        resolved run config           ds_config.json   DeepSpeed config (what the ranks run)
  command.json       launch argv, env, cwd          manifest.json    supervisor pid, pgid, start time
  status.json        `Status` (atomic writes)       train.log        launcher + ranks output
  metrics.jsonl      one `MetricsRow` per log step (rank 0 only, flushed)
  resources.jsonl    memory samples                 control.json     `Control`: requests to the trainer (stop)
  heartbeat.json     rank 0's "still alive" time, rewritten every HEARTBEAT_EVERY_S seconds
  launch_exit.json   the signal that killed DeepSpeed's `launch`, when one did (keep_locks)
  supervisor.log     the supervisor's own stderr    hostfile, launch_node.sh, launch_slurm.sbatch (multi-node)
  checkpoints/checkpoint-N/COMPLETE                 final/  consolidated model (+ persona.json), written last
  exports/checkpoint-N/                             a checkpoint consolidated by `export`
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import re
import socket
import threading
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Re-exported, so a writer needs this module only: atomic files, and the checkpoints' completion protocol.
from trainer_core.common.errors import Text, text
from trainer_core.common.atomic import fsync_dir, read_json, write_json_atomic, write_text_atomic  # noqa: F401
from trainer_core.runs.checkpoints import (  # noqa: F401
    CHECKPOINT_PREFIX, CHECKPOINTS, COMPLETE_MARKER, FINAL, FINAL_TMP, checkpoint_dir, checkpoint_step,
    complete_checkpoints, has_final, latest_checkpoint, mark_complete, remove_partial)
from trainer_core.models.persona_template import PERSONA_FILE

# ---------------------------------------------------------------- file names

CONFIG = "config.yaml"
DS_CONFIG = "ds_config.json"
COMMAND = "command.json"
MANIFEST = "manifest.json"
STATUS = "status.json"
LOG = "train.log"
SUPERVISOR_LOG = "supervisor.log"
METRICS = "metrics.jsonl"
METRICS_ABANDONED = "metrics-abandoned.jsonl"  # rows of continuations a resume from an earlier step abandoned
RESOURCES = "resources.jsonl"
CONTROL = "control.json"
HEARTBEAT = "heartbeat.json"
LAUNCH_EXIT = "launch_exit.json"  # {pid, signal}: DeepSpeed's `launch` was killed (its runner exits 0 regardless)
HOSTFILE = "hostfile"
EXPORTS = "exports"
PERSONA = PERSONA_FILE  # in final/ and every export: the persona and base model the weights were trained with

# ---------------------------------------------------------------- states and phases

QUEUED, STARTING, RUNNING, STOPPING = "queued", "starting", "running", "stopping"
COMPLETED, FAILED, STOPPED = "completed", "failed", "stopped"
STATES = (QUEUED, STARTING, RUNNING, STOPPING, COMPLETED, FAILED, STOPPED)
LIVE = frozenset({STARTING, RUNNING, STOPPING})  # a process of the run exists (or should)
TERMINAL = frozenset({COMPLETED, FAILED, STOPPED})  # final: written once no process of the run remains


def state_text(state: str) -> Text:
    """A state as a message parameter, so a sentence about a run names its state in the reader's language."""
    return {QUEUED: text("runs.state_queued", "queued"), STARTING: text("runs.state_starting", "starting"),
            RUNNING: text("runs.state_running", "running"), STOPPING: text("runs.state_stopping", "stopping"),
            COMPLETED: text("runs.state_completed", "completed"), FAILED: text("runs.state_failed", "failed"),
            STOPPED: text("runs.state_stopped", "stopped")}.get(state) or text("runs.state_other", "{state}",
                                                                              state=state)

# What a live run is doing now (Status.phase); the dashboard translates each.
PHASE_TRAINING = "training"
PHASE_EVALUATING = "evaluating"
PHASE_SAVING = "saving checkpoint"
PHASE_FINISHING = "finishing"
PHASE_CONSOLIDATING = "consolidating final"
# Start-up, in order: the supervisor writes the first, rank 0 the others as it reaches them (phase_done/phase_total
# count them, so a reader shows "loading the model 3/6"). A stop request is honoured between them (train.py).
PHASE_LAUNCHING = "launching ranks"
PHASE_JOINING = "joining the process group"
PHASE_PREPARING_DATA = "preparing data"
PHASE_LOADING_MODEL = "loading the model"
PHASE_BUILDING_KERNELS = "building kernels"
PHASE_INITIALISING = "initialising DeepSpeed"
STARTUP_PHASES = (PHASE_LAUNCHING, PHASE_JOINING, PHASE_PREPARING_DATA, PHASE_LOADING_MODEL, PHASE_BUILDING_KERNELS,
                  PHASE_INITIALISING)
PHASES = (*STARTUP_PHASES, PHASE_TRAINING, PHASE_EVALUATING, PHASE_SAVING, PHASE_FINISHING, PHASE_CONSOLIDATING)


def startup_phase(phase: str) -> dict[str, Any]:
    """The status.json fields that say the run is at start-up step `phase` (counted from 1)."""
    return {"phase": phase, "phase_done": STARTUP_PHASES.index(phase) + 1, "phase_total": len(STARTUP_PHASES)}

# Runs launched outside our supervisor (launch_node.sh, Slurm) have no process here to check, so rank 0 proves it
# is alive by rewriting heartbeat.json; a heartbeat older than HEARTBEAT_STALE_S means the job is gone. The margin
# covers a slow shared filesystem and modest clock skew between the training node and the dashboard's machine.
HEARTBEAT_EVERY_S = 30.0
HEARTBEAT_STALE_S = 300.0


def text_to_json(message: Text) -> dict[str, Any]:
    """A `Text` as JSON ({code, template, params}); a parameter that is itself a `Text` nests the same way, and one
    JSON cannot hold (a path) is written as its string, which is how the sentence shows it anyway."""
    def value(v: Any) -> Any:
        if isinstance(v, Text):
            return text_to_json(v)
        return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)

    return {"code": message.code, "template": message.template,
            "params": {k: value(v) for k, v in message.params.items()}}


def text_from_json(data: Any) -> Text | None:
    """The `Text` written by text_to_json, or None for anything else (a missing field, a hand-edited file): the
    reader then falls back to the English sentence kept beside it."""
    if not (isinstance(data, dict) and isinstance(data.get("code"), str) and isinstance(data.get("template"), str)):
        return None
    params = data.get("params") if isinstance(data.get("params"), dict) else {}
    try:
        return Text(data["code"], data["template"],
                    {k: (text_from_json(v) or v) if isinstance(v, dict) else v for k, v in params.items()})
    except ValueError:  # not a code: not ours
        return None


def _known(cls, data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a JSON object into the dataclass's fields and the rest (newer or older writers' keys)."""
    data = data if isinstance(data, dict) else {}
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has a field's declared type (int is no bool, and an int is a float)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _typed(cls, known: dict[str, Any]) -> dict[str, Any]:
    """The fields whose values have their declared types; a damaged one (hand-edited, written by a buggy tool)
    reads as its default, so one bad value cannot make the run unreadable (`runs` lists every run)."""
    if isinstance(known.get("segments"), list):  # keep the good (start, end) pairs of a damaged list
        known["segments"] = [x for x in known["segments"] if _fits(x, list[float]) and len(x) == 2]
    hints = _hints(cls)
    return {k: v for k, v in known.items() if _fits(v, hints[k])}


@dataclass
class Status:
    """status.json: where a run stands. Written by the run's creator (queued), the supervisor (state, outcome) and
    the trainer's rank 0 (progress); fields not given are absent from old run directories and read as defaults."""

    state: str = QUEUED
    """One of STATES; a reader checks a live state against the processes (state.read_state)."""
    name: str | None = None
    """The run's name (its directory's name)."""
    created: float | None = None
    """When the run directory was created (epoch seconds)."""
    updated: float | None = None
    """When this file was last written."""
    nodes_expected: int | None = None
    """placement.num_nodes at creation."""
    world_size: int | None = None
    """Total ranks (nodes × ranks per node)."""
    lints: list[str] = field(default_factory=list)
    """The config's warnings at creation, as English sentences."""
    launcher_pid: int | None = None
    """DeepSpeed's launcher process, started by the supervisor."""
    phase: str | None = None
    """One of PHASES while live, else None."""
    phase_done: int | None = None
    """Progress inside the phase (evaluation batches done)."""
    phase_total: int | None = None
    """Size of the phase (evaluation batches)."""
    step: int = 0
    """Optimizer steps done."""
    total_steps: int | None = None
    """Optimizer steps the trainer will run, once it knows."""
    loss: float | None = None
    """Latest training loss."""
    eval_loss: float | None = None
    """Latest evaluation loss."""
    eta_s: float | None = None
    """Seconds of training left (None once training is over)."""
    started_training: float | None = None
    """When the first step of this segment began."""
    last_checkpoint: int | None = None
    """Step of the newest complete checkpoint."""
    resumed_from: int | None = None
    """Checkpoint step the current segment resumed from (None: from scratch)."""
    segments: list[list[float]] = field(default_factory=list)
    """Ended (start, end) segments before the current one: a run's time survives Resume."""
    final: bool = False
    """The consolidated model in final/ is written."""
    exit_code: int | None = None
    """The launcher's exit code, once ended."""
    ended: float | None = None
    """When the run reached a terminal state."""
    forced: bool | None = None
    """A stop skipped the save (force stop)."""
    error: str | None = None
    """Why the run failed, in one line of English (the CLI's text, and what readers older than `error_text` show)."""
    error_text: Text | None = None
    """The same reason as a coded message, so the dashboard can say it in the tab's language; None in run
    directories written before it existed (their `error` is shown as it is)."""
    note: str | None = None
    """Something to know about how a run ended that is not a failure (its supervisor died after final/ was
    complete), in English."""
    note_text: Text | None = None
    """The same note as a coded message."""
    trainable_params: int | None = None
    """Parameters that train in a lora/qlora run (the adapter's), written by rank 0 once the model is built."""
    total_params: int | None = None
    """Base and adapter parameters together in a lora/qlora run."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know; kept so a rewrite loses nothing."""

    @classmethod
    def from_json(cls, data: Any) -> "Status":
        known, extra = _known(cls, data)
        for key in ("error_text", "note_text"):
            if key in known:
                known[key] = text_from_json(known[key])
        return cls(**_typed(Status, known), extra=extra)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(Status) if f.name != "extra"}
        for key in ("error_text", "note_text"):
            out[key] = text_to_json(getattr(self, key)) if getattr(self, key) is not None else None
        return {**self.extra, **out}

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass
class MetricsRow:
    """One line of metrics.jsonl, written by rank 0 at every logging step (training) or evaluation."""

    step: int
    """Optimizer step."""
    total_steps: int | None = None
    """Steps the run will take."""
    epoch: float | None = None
    """Fractional epoch."""
    loss: float | None = None
    """Training loss (None on an evaluation row)."""
    eval_loss: float | None = None
    """Evaluation loss (None on a training row)."""
    lr: float | None = None
    """Learning rate."""
    grad_norm: float | None = None
    """Gradient norm before clipping."""
    tokens_per_s: float | None = None
    """Tokens (all ranks) per second since the previous row."""
    label_tokens_per_s: float | None = None
    """Trained (answer) tokens per second since the previous row."""
    tokens: int | None = None
    """Tokens seen so far, all ranks."""
    label_tokens: int | None = None
    """Trained tokens so far, all ranks."""
    elapsed_s: float | None = None
    """Seconds since training (this segment) began."""
    eta_s: float | None = None
    """Estimated seconds left."""
    peak_mem_bytes: list[int] | None = None
    """Peak accelerator (or process) memory per rank."""
    eval_s: float | None = None
    """Seconds the evaluation took (lets a reader subtract it from training time)."""
    time: float | None = None
    """When the row was written."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know."""

    @classmethod
    def from_json(cls, data: Any) -> "MetricsRow":
        known, extra = _known(cls, data)
        known.setdefault("step", 0)
        return cls(**known, extra=extra)

    def to_json(self) -> dict[str, Any]:
        """Absent values are left out, except the two losses: a reader tells training and evaluation rows apart."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(MetricsRow) if f.name != "extra"}
        return {**self.extra, **{k: v for k, v in out.items() if v is not None or k in ("loss", "eval_loss")}}


def append_metrics(f, row: MetricsRow) -> None:
    """One flushed line, so a dashboard tailing the file never sees half a row."""
    f.write(json.dumps(row.to_json()) + "\n")
    f.flush()


# ---------------------------------------------------------------- control.json: requests to a running trainer

SAVE_AND_STOP = "save_and_stop"
FORCE_STOP = "force_stop"


@dataclass
class Control:
    """control.json: a request to the trainer, read by rank 0 every step."""

    action: str | None = None
    """SAVE_AND_STOP or FORCE_STOP; None: no request."""
    requested: float | None = None
    """When it was asked."""
    cause: str | None = None
    """Set when the supervisor asked because a process of the run died (the run then ends `failed`), in English."""
    cause_text: Text | None = None
    """The same cause as a coded message (None from older writers, or when the cause was given as plain text)."""

    @classmethod
    def from_json(cls, data: Any) -> "Control":
        known = _known(cls, data)[0]
        if "cause_text" in known:
            known["cause_text"] = text_from_json(known["cause_text"])
        return cls(**known)


def read_control(run_dir: Path) -> Control:
    return Control.from_json(read_json(run_dir / CONTROL))


def request(run_dir: Path, action: str, cause: str | Text | None = None) -> None:
    data: dict[str, Any] = {"action": action, "requested": time.time()}
    if cause:
        data["cause"] = str(cause)
        if isinstance(cause, Text):
            data["cause_text"] = text_to_json(cause)
    write_json_atomic(run_dir / CONTROL, data)


# ---------------------------------------------------------------- train.log: which lines are errors

ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[A-Za-z_][\w.]*)?(?:Error|Exception|Interrupt)\b.*|error: .*)$")
OOM = re.compile(r"out of memory|OutOfMemoryError|can't allocate memory|Cannot allocate memory|std::bad_alloc", re.I)
RANK_EXIT = re.compile(r"sigkill_handler\].*exits with return code = (-?\d+)")
NO_SPACE = re.compile(r"No space left on device|ENOSPC|Disk quota exceeded", re.I)


def error_message(line: str) -> str | None:
    """The exception text of a log line that reports one (a rank's `[rankN]:` prefix removed), else None."""
    m = ERROR_LINE.match(line.strip())
    return m.group(1).strip() if m else None


def is_error_line(line: str) -> bool:
    """A line the monitor shows in red: an exception, a traceback's start, or out of memory."""
    s = line.strip()
    return bool(ERROR_LINE.match(s) or s.startswith("Traceback") or OOM.search(s))


# ---------------------------------------------------------------- reading and writing

def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The supervisor's manifest.json ({} for a run it never started, or one launched outside it)."""
    data = read_json(run_dir / MANIFEST)
    return data if isinstance(data, dict) else {}


def start_heartbeat(run_dir: Path, every_s: float = HEARTBEAT_EVERY_S) -> threading.Event:
    """Rewrite heartbeat.json now and then every `every_s` seconds from a daemon thread, which dies with the process
    (that is the point: a killed job stops beating). Set the returned event to stop it."""
    stop = threading.Event()
    path = run_dir / HEARTBEAT
    host, pid = socket.gethostname(), os.getpid()

    def beat() -> None:
        while True:
            try:
                write_json_atomic(path, {"time": time.time(), "host": host, "pid": pid})
            except OSError:
                pass  # a full disk must not kill training; the next beat tries again
            if stop.wait(every_s):
                return

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()
    return stop


def heartbeat_age(run_dir: Path, now: float | None = None) -> float | None:
    """Seconds since rank 0's last heartbeat, or None when the run has none (never started, or older runs)."""
    beat = read_json(run_dir / HEARTBEAT)
    if not isinstance(beat, dict) or not isinstance(beat.get("time"), (int, float)):
        return None
    return max(0.0, (time.time() if now is None else now) - float(beat["time"]))


def read_status(run_dir: Path) -> Status:
    return Status.from_json(read_json(run_dir / STATUS))


STATUS_BLOCK = 4096
# Room kept free in status.json for the final write: the failure reason, written twice (error and error_text), with
# a 500-character log line that may be UTF-8 (3 bytes a character) and JSON-escaped.
STATUS_SLACK = 4096


def write_status(run_dir: Path, status: Status) -> None:
    """Replace status.json. The file is padded with spaces to whole 4 KiB blocks, with STATUS_SLACK to spare: when
    the disk is full a new file cannot be written, but the final state still must be, so then the existing blocks
    are overwritten in place, and the reason the run failed must fit in them."""
    text = json.dumps(status.to_json(), ensure_ascii=False, indent=1)
    size = -(-(len(text.encode()) + 1 + STATUS_SLACK) // STATUS_BLOCK) * STATUS_BLOCK
    padded = text + " " * (size - len(text.encode()) - 1) + "\n"
    path = run_dir / STATUS
    try:
        write_text_atomic(path, padded)
    except OSError as e:
        if e.errno != errno.ENOSPC or not path.exists() or path.stat().st_size < len(padded.encode()):
            raise
        with open(path, "r+b") as f:
            f.write(padded.encode().ljust(path.stat().st_size, b" "))
            f.flush()
            os.fsync(f.fileno())


def update_status(run_dir: Path, **fields: Any) -> Status:
    """Set some fields of status.json (a misspelt field is a TypeError). Writers: the trainer's rank 0 (progress)
    and the supervisor (state). `error` and `note` are given as a `Text` (or None to clear it): both `error` (its
    English) and `error_text` are written from it, so the two never disagree."""
    for key in ("error", "note"):
        if key in fields:
            reason = fields[key]
            fields[f"{key}_text"] = reason if isinstance(reason, Text) else None
            fields[key] = None if reason is None else str(reason)
    status = dataclasses.replace(read_status(run_dir), **fields, updated=time.time())
    write_status(run_dir, status)
    return status
