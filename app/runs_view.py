"""Runs page logic: the history table, loss overlays, relaunch and clone-into-the-form."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import altair as alt
import pandas as pd

from app.i18n import state_name
from trainer_core import run_dir as rd
from trainer_core.config import RunConfig, load_config
from trainer_core.errors import UserError
from trainer_core.supervisor import read_state
from trainer_core.tailing import read_all_rows


def saved_config(run: Path) -> RunConfig:
    return load_config(run / rd.CONFIG)


def _loss(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def history_row(run: Path) -> dict:
    from app.monitor_view import fmt_duration

    s = read_state(run)
    try:
        cfg = saved_config(run)
        model, data = Path(cfg.model.path).name, Path(cfg.data.path).name
    except UserError:
        model = data = "?"
    total = s.get("total_steps")
    return {
        "name": run.name,
        "model": model,
        "data": data,
        "state": state_name(s["state"]),
        "steps": f"{s.get('step') or 0}/{total or '?'}",
        "final loss": _loss(s.get("loss")),
        "eval loss": _loss(s.get("eval_loss")),
        "duration": fmt_duration(s.get("run_s")),  # the Monitor's "run time": segments added up
        "checkpoints": ", ".join(map(str, s["checkpoints"])),
    }


def history_frame(runs: list[Path]) -> pd.DataFrame:
    return pd.DataFrame([history_row(r) for r in runs],
                        columns=["name", "model", "data", "state", "steps", "final loss", "eval loss", "duration",
                                 "checkpoints"])


def loss_overlay(runs: list[Path], x_title: str, y_title: str) -> alt.Chart | None:
    """Training loss of several runs on one chart, one colour per run."""
    parts = []
    for run in runs:
        rows = [r for r in read_all_rows(run / rd.METRICS) if r.get("loss") is not None]
        if rows:
            df = pd.DataFrame(rows)[["step", "loss"]].drop_duplicates("step", keep="last")
            df["run"] = run.name
            parts.append(df)
    if not parts:
        return None
    return alt.Chart(pd.concat(parts)).mark_line().encode(
        x=alt.X("step:Q", title=x_title, axis=alt.Axis(tickMinStep=1, format="d")), y=alt.Y("loss:Q", title=y_title, scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", title=None, legend=alt.Legend(orient="top")),
        tooltip=["run", "step", alt.Tooltip("loss:Q", format=".4f")],
    ).properties(height=320)


def as_new_run(cfg: RunConfig) -> RunConfig:
    """The same config under a fresh (generated) name, for relaunching or editing."""
    return dataclasses.replace(cfg, name="")
