"""Checkpoints that count: a checkpoint is offered for resume, chat or export only once its COMPLETE marker is written,
after every rank finished its shards (part of the run-directory protocol; `protocol` re-exports all of it)."""

from __future__ import annotations

import shutil
from pathlib import Path

# The marker and its writer sit on the ground floor: the models layer writes and checks complete folders too.
from trainer_core.common.atomic import COMPLETE_MARKER, mark_complete  # noqa: F401

CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
FINAL = "final"
FINAL_TMP = ".final.tmp"  # final/ while rank 0 writes it; renamed to final/ once complete


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"{CHECKPOINT_PREFIX}{step}"


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
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*")
             if (p / COMPLETE_MARKER).is_file() and checkpoint_step(p) >= 0]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def has_final(run_dir: Path) -> bool:
    return (run_dir / FINAL / COMPLETE_MARKER).is_file()


def remove_partial(run_dir: Path) -> list[str]:
    """Delete what a killed save left: checkpoint folders without their COMPLETE marker, and final/'s temporary
    folder. Call only while no process of the run lives (start, resume, stop). Returns the names removed."""
    root = run_dir / CHECKPOINTS
    partial = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and not (p / COMPLETE_MARKER).is_file()]
    removed = []
    for p in [*sorted(partial, key=checkpoint_step), run_dir / FINAL_TMP]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed
