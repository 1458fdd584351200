"""What a run produced, answered in one place: its model folders (final/, complete checkpoints, exports), a
checkpoint by step, where an export goes, and the persona a model folder speaks with and where that came from.

The CLI's chat and export, the Chat and Runs pages, downloads, resume and persona evaluation all ask here, so "which
models does this run have" has one answer. Only complete folders (their COMPLETE marker written) are ever offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer_core.common.errors import UserError
from trainer_core.runs import protocol

FINAL_LABEL = protocol.FINAL
"""How final/ is named among a run's models (the chat target, the evaluation label)."""
EXPORT_LABEL = "export-"
"""Prefix of an export's label among a run's models: export-<step>, beside the checkpoint-<step> it came from."""


def is_run(path: Path) -> bool:
    return (Path(path) / protocol.CONFIG).is_file()


def final_model(run: Path) -> Path | None:
    """final/ when it is complete."""
    return run / protocol.FINAL if protocol.has_final(run) else None


def checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints, oldest first; partial ones (no COMPLETE marker) are never offered."""
    return protocol.complete_checkpoints(run)


def exports(run: Path) -> list[Path]:
    """Complete exports, newest first: exports/checkpoint-N/ (a consolidated checkpoint, or a lora run's adapter),
    and for lora/qlora runs exports/final/ and the merged models exports/<final or checkpoint-N>-merged/."""
    root = run / protocol.EXPORTS
    found = [p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")
             and (p / protocol.COMPLETE_MARKER).is_file() and _export_order(p) is not None]
    return sorted(found, key=_export_order, reverse=True)


def _export_order(folder: Path) -> tuple[int, int] | None:
    """(step, merged) of an export folder's name; final counts as the last step; None for a name we never write."""
    name = folder.name.removesuffix("-merged")
    merged = int(name != folder.name)
    if name == protocol.FINAL:
        return (2**62, merged)
    step = protocol.checkpoint_step(Path(name)) if name.startswith(protocol.CHECKPOINT_PREFIX) else -1
    return (step, merged) if step >= 0 else None


def export_label(folder: Path) -> str:
    """export-<step>, export-final, with -merged for a merged adapter: how the Chat page names an export."""
    return EXPORT_LABEL + folder.name.removeprefix(protocol.CHECKPOINT_PREFIX)


def chat_models(run: Path) -> dict[str, Path]:
    """Every model of a run that can be chatted with, by label: final, then exports and checkpoints, newest first."""
    out: dict[str, Path] = {}
    if (final := final_model(run)) is not None:
        out[FINAL_LABEL] = final
    for p in exports(run):
        out[export_label(p)] = p
    for p in reversed(checkpoints(run)):
        out[p.name] = p
    return out


def downloadable(run: Path) -> list[Path]:
    """Model folders a user can take away (consolidated safetensors, no optimizer shards): final/, then exports."""
    final = final_model(run)
    return ([final] if final is not None else []) + exports(run)


def trained_models(run: Path) -> list[Path]:
    """Every model training wrote, in training order: complete checkpoints oldest first, then final/."""
    final = final_model(run)
    return checkpoints(run) + ([final] if final is not None else [])


def checkpoint(run: Path, step: int) -> Path:
    """The complete checkpoint of `step`, or one line naming the complete ones."""
    done = checkpoints(run)
    for p in done:
        if protocol.checkpoint_step(p) == step:
            return p
    have = ", ".join(str(protocol.checkpoint_step(p)) for p in done) or "none"
    raise UserError("runs.no_such_checkpoint", "run {name} has no complete checkpoint {step}; complete checkpoints: "
                    "{have}", name=run.name, step=step, have=have)


def newest_checkpoint(run: Path) -> Path | None:
    return protocol.latest_checkpoint(run)


def resume_checkpoint(run: Path, step: int | None) -> Path | None:
    """What a resume starts from: the checkpoint of `step`, else the newest (None: from the start)."""
    return newest_checkpoint(run) if step is None else checkpoint(run, step)


def export_source(run: Path, step: int | None) -> Path:
    """The checkpoint an export consolidates: the one of `step`, else the newest."""
    if not checkpoints(run):
        raise UserError("models.export_no_checkpoint", "run {run} has no complete checkpoint to export", run=run.name)
    return newest_checkpoint(run) if step is None else checkpoint(run, step)


def export_target(run: Path, ckpt: Path) -> Path:
    """Where the export of a checkpoint goes: exports/checkpoint-N/ (replaced by a new export of the same step)."""
    return run / protocol.EXPORTS / ckpt.name


def export_checkpoint(run: Path, step: int | None = None, *, persona_in_template: bool = True) -> Path:
    """Consolidate a complete checkpoint (`step`, else the newest) into exports/checkpoint-N/, a model folder with
    the run's persona. Returns the folder."""
    from trainer_core.config.run_config import load_config
    from trainer_core.models.export import consolidate

    ckpt = export_source(run, step)
    return consolidate(ckpt, export_target(run, ckpt), load_config(run / protocol.CONFIG),
                       persona_in_template=persona_in_template)


def adapter_source(run: Path, step: int | None) -> Path:
    """The adapter folder of a lora/qlora run to export: checkpoint `step`, else final/, else the newest complete
    checkpoint. The Trainer writes each one's adapter_model.safetensors whole, so no ZeRO shard is read."""
    final = final_model(run)
    if step is None and final is not None:
        return final
    return export_source(run, step)


def export_adapter_run(run: Path, step: int | None = None, *, merge: bool = False,
                       persona_in_template: bool = True) -> Path:
    """A lora/qlora run's export into exports/: the adapter (exports/<final or checkpoint-N>/) or, with `merge`, the
    merged full model (exports/<final or checkpoint-N>-merged/)."""
    from trainer_core.models.export import export_adapter

    src = adapter_source(run, step)
    dest = run / protocol.EXPORTS / (f"{src.name}-merged" if merge else src.name)
    from trainer_core.config.run_config import load_config

    return export_adapter(src, dest, load_config(run / protocol.CONFIG), merge=merge,
                          persona_in_template=persona_in_template)


def model_dir(ref: str | Path, step: int | None = None) -> Path:
    """A model folder as given; for a run directory, the checkpoint of `step`, else final/, else the newest complete
    checkpoint."""
    p = Path(ref).expanduser()
    if is_run(p):
        if step is not None:
            return checkpoint(p, step)
        found = final_model(p) or newest_checkpoint(p)
        if found is None:
            raise UserError("models.run_has_no_model", "run {run} has no final model and no complete checkpoint yet",
                            run=p.name)
        return found
    if step is not None:
        raise UserError("models.checkpoint_needs_run",
                        "--checkpoint {step} applies to runs only; {path} is a model folder, not a run",
                        step=step, path=str(p))
    return p


# ---------------------------------------------------------------- the persona a model speaks with

# Where a persona came from.
PERSONA_GIVEN = "given"
"""The caller gave one (--persona, the Chat page's box)."""
PERSONA_FILE = "persona.json"
"""persona.json in the model folder (final/ and every export carry one)."""
PERSONA_RUN_CONFIG = "run_config"
"""A checkpoint's run config (data.persona): checkpoints carry no persona.json."""
PERSONA_NONE = "none"
"""A plain model folder: no persona, so its own chat template supplies its default system prompt (a model as
shipped is chatted with as shipped, not with our role-play persona)."""


@dataclass(frozen=True)
class Persona:
    """The system prompt a chat with a model folder uses, and where it came from."""

    text: str
    """The persona; empty for none."""
    source: str
    """One of PERSONA_GIVEN, PERSONA_FILE, PERSONA_RUN_CONFIG, PERSONA_NONE."""

    @property
    def trained(self) -> bool:
        """The persona the weights were trained with."""
        return self.source in (PERSONA_FILE, PERSONA_RUN_CONFIG)


def trained_persona(folder: Path) -> Persona:
    """The persona a model folder was trained with: its persona.json, else (a checkpoint) its run's config, else
    none."""
    folder = Path(folder)
    info = protocol.read_json(folder / protocol.PERSONA)
    if isinstance(info, dict) and info.get("persona"):
        return Persona(info["persona"], PERSONA_FILE)
    run = folder.parent.parent if folder.parent.name == protocol.CHECKPOINTS else None
    if run is not None and is_run(run):
        from trainer_core.config.run_config import load_config

        text = load_config(run / protocol.CONFIG).data.persona
        if text:
            return Persona(text, PERSONA_RUN_CONFIG)
    return Persona("", PERSONA_NONE)


def chat_persona(folder: Path, given: str | None = None) -> Persona:
    """The persona a chat uses: the one given, else the one the model was trained with, else none."""
    if given is not None:
        return Persona(given, PERSONA_GIVEN)
    return trained_persona(folder)
