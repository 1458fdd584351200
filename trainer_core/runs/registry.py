"""The runs folder: naming new runs, finding, listing and deleting existing ones (orchestrate creates them)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from trainer_core.common import paths
from trainer_core.config.run_config import RunConfig
from trainer_core.common.errors import Text, UserError, text
from trainer_core.runs import protocol

if TYPE_CHECKING:
    from trainer_core.runs.state import RunState


def new_run_name(cfg: RunConfig) -> str:
    return cfg.name or time.strftime("run-%Y%m%d-%H%M%S")


def unwritable(root: Path, e: OSError) -> UserError:
    return UserError("runs.folder_unwritable", "the runs folder {root} is not writable ({reason}); make it writable "
                     "or set TRAINER_RUNS_ROOT to a folder that is", root=root, reason=e.strerror)


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
                raise UserError("runs.name_taken", "name: a run called {name!r} already exists in {root}; pick another "
                                "name", name=base, root=root) from None
    raise UserError("runs.no_free_name", "could not find a free run name next to {name!r} in {root}", name=base,
                    root=root)


def list_runs(runs_root: Path | None = None) -> list[Path]:
    root = runs_root or paths.runs_root()
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / protocol.CONFIG).is_file()]
    return sorted(runs, key=lambda p: (p / protocol.CONFIG).stat().st_mtime, reverse=True)


DAMAGED = "damaged"
"""The state `runs` and the Runs page show for a folder whose files cannot be read as a run."""


def read_listed(run: Path) -> "tuple[RunState | None, Text | None]":
    """(the run's state, None), or (None, why its folder cannot be read): one damaged folder (a status.json that
    is a folder, a file the reader cannot take) is listed as such, and every other run still is."""
    from trainer_core.runs.state import read_state

    try:
        return read_state(run), None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        return None, text("runs.damaged", "its files cannot be read ({detail})",
                          detail=f"{type(e).__name__}: {e}"[:200])


def resolve_run_dir(ref: str | Path) -> Path:
    """A run given as a path or as a name under the runs root."""
    p = Path(ref)
    if not p.is_dir():
        p = paths.runs_root() / str(ref)
    if not (p / protocol.CONFIG).is_file():
        raise UserError("runs.not_a_run", "{ref} is not a run directory (no {config}); `python -m trainer_core runs` "
                        "lists them", ref=ref, config=protocol.CONFIG)
    return p.resolve()


def delete_run(run: Path) -> None:
    """Remove a run directory; refused while any of its processes is alive."""
    from trainer_core.runs.state import read_state

    state = read_state(run)
    if state.alive:
        raise UserError("runs.delete_live", "run {name} is {state}; stop it before deleting", name=run.name,
                        state=protocol.state_text(state.state))
    root = paths.runs_root().resolve()
    if run.resolve().parent != root:
        raise UserError("runs.delete_outside", "{run} is not inside the runs folder {root}", run=run, root=root)
    shutil.rmtree(run)
