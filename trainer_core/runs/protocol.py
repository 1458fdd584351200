"""The run directory: the only channel between the dashboard, the CLI, the supervisor and the trainer.

Layout of runs/<name>/:
  config.yaml        resolved run config           ds_config.json   DeepSpeed config
  command.json       launch argv, env, cwd          manifest.json    supervisor pid, pgid, start time
  status.json        state machine (atomic writes)  train.log        launcher + ranks output
  metrics.jsonl      one JSON object per log step (rank 0 only, flushed)
  resources.jsonl    memory samples                 control.json     requests to the trainer (stop)
  heartbeat.json     rank 0's "still alive" time, rewritten every HEARTBEAT_EVERY_S seconds
  checkpoints/checkpoint-N/COMPLETE                 final/           consolidated model, written last
"""

from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
DS_CONFIG = "ds_config.json"
COMMAND = "command.json"
MANIFEST = "manifest.json"
STATUS = "status.json"
LOG = "train.log"
METRICS = "metrics.jsonl"
RESOURCES = "resources.jsonl"
CONTROL = "control.json"
HEARTBEAT = "heartbeat.json"
CHECKPOINTS = "checkpoints"
FINAL = "final"
COMPLETE_MARKER = "COMPLETE"

TERMINAL_STATES = ("completed", "failed", "stopped")

# Runs launched outside our supervisor (launch_node.sh, Slurm) have no process here to check, so rank 0 proves it
# is alive by rewriting heartbeat.json; a heartbeat older than HEARTBEAT_STALE_S means the job is gone. The margin
# covers a slow shared filesystem and modest clock skew between the training node and the dashboard's machine.
HEARTBEAT_EVERY_S = 30.0
HEARTBEAT_STALE_S = 300.0


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    _write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=1))


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return default


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


def read_status(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / STATUS, {}) or {}


STATUS_BLOCK = 4096


def update_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into status.json. Writers: the trainer's rank 0 (progress) and the supervisor (state).

    The file is padded with spaces to whole 4 KiB blocks. When the disk is full a new file cannot be written, but
    the final state still must be: then the existing blocks are overwritten in place, which needs no new space.
    """
    status = read_status(run_dir)
    status.update(fields, updated=time.time())
    text = json.dumps(status, ensure_ascii=False, indent=1)
    size = -(-(len(text.encode()) + 1) // STATUS_BLOCK) * STATUS_BLOCK
    padded = text + " " * (size - len(text.encode()) - 1) + "\n"
    path = run_dir / STATUS
    try:
        _write_text_atomic(path, padded)
    except OSError as e:
        if e.errno != errno.ENOSPC or not path.exists() or path.stat().st_size < len(padded.encode()):
            raise
        with open(path, "r+b") as f:
            f.write(padded.encode().ljust(path.stat().st_size, b" "))
            f.flush()
            os.fsync(f.fileno())
    return status


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(checkpoint: Path, info: dict[str, Any]) -> None:
    """Write the completion marker of a checkpoint: fsync every file, then the marker via rename."""
    for p in checkpoint.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    tmp = checkpoint / f".{COMPLETE_MARKER}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, checkpoint / COMPLETE_MARKER)
    fsync_dir(checkpoint)


def checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints every rank finished writing, oldest first. Partial ones are never offered."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file() and checkpoint_step(p) >= 0]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def has_final(run_dir: Path) -> bool:
    return (run_dir / FINAL / COMPLETE_MARKER).is_file()
