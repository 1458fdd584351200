"""A lora/qlora run on the dashboard: its base model, trainable parameters and adapter size (Monitor, Runs), and
the Runs page's Merge button, which writes base + adapter as one full model that downloads like any export."""

from __future__ import annotations

from pathlib import Path

from app.i18n import say, t
from trainer_core.common.errors import UserError
from trainer_core.config.memory import fmt_bytes
from trainer_core.config.run_config import RunConfig, load_config
from trainer_core.runs import outputs
from trainer_core.runs import protocol

ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's file name (models/adapters.py)


def _config(run: Path) -> RunConfig | None:
    try:
        return load_config(run / protocol.CONFIG)
    except UserError:
        return None


def adapter_size(run: Path) -> int | None:
    """Bytes of the newest adapter the run wrote (final/, else its newest complete checkpoint); None before any."""
    for folder in [outputs.final_model(run), *reversed(outputs.checkpoints(run))]:
        if folder is not None and (folder / ADAPTER_WEIGHTS).is_file():
            return (folder / ADAPTER_WEIGHTS).stat().st_size
    return None


def facts(run: Path, status: protocol.Status, cfg: RunConfig | None = None) -> str | None:
    """`LoRA on qwen2-starter · 120,832 of 9,869,120 parameters train (1.22%) · adapter 473 KiB`; None for a full
    fine-tune or a run whose config cannot be read."""
    cfg = cfg or _config(run)
    if cfg is None or cfg.train.method == "full":
        return None
    parts = [t("adapter.base", method=t(f"fit.method.{cfg.train.method}"), base=Path(cfg.model.path).name)]
    if status.trainable_params is not None and status.total_params:
        parts.append(t("adapter.trainable", trainable=f"{status.trainable_params:,}", total=f"{status.total_params:,}",
                       share=f"{100 * status.trainable_params / status.total_params:.2f}"))
    size = adapter_size(run)
    if size is not None:
        parts.append(t("adapter.size", size=fmt_bytes(size)))
    return " · ".join(parts)


def monitor_caption(run: Path, status: protocol.Status) -> None:
    import streamlit as st

    line = facts(run, status)
    if line:
        st.caption(line)


def runs_panel(run: Path, status: protocol.Status, cfg: RunConfig | None) -> None:
    """Base, trainable parameters and a Merge button (final/, else the newest checkpoint) for a lora/qlora run."""
    import streamlit as st

    line = facts(run, status, cfg)
    if line is None:
        return
    st.caption(line)
    ready = outputs.final_model(run) is not None or bool(outputs.checkpoints(run))
    if st.button(t("adapter.merge"), key="runs.merge", icon=":material/merge:", disabled=not ready or status.alive,
                 help=t("adapter.merge_help")):
        try:
            with st.spinner(t("adapter.merging")):
                dest = outputs.export_adapter_run(run, merge=True)
        except UserError as e:
            st.error(say(e), icon=":material/error:")
        else:
            st.success(t("adapter.merged", path=str(dest)), icon=":material/check:")
