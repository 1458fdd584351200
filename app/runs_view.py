"""Runs page logic: the history table, loss overlays, relaunch and clone-into-the-form."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import altair as alt
import pandas as pd

from app.i18n import say, state_name
from trainer_core.runs import protocol
from trainer_core.config.run_config import RunConfig, load_config
from trainer_core.common.errors import UserError
from trainer_core.runs.registry import DAMAGED, read_listed
from trainer_core.common.tailing import read_all_rows


def saved_config(run: Path) -> RunConfig:
    return load_config(run / protocol.CONFIG)


def _loss(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def history_row(run: Path) -> dict:
    from app.monitor_view import fmt_duration

    s, problem = read_listed(run)
    if s is None:  # a damaged folder is a row that says so; the other runs are listed as ever
        return {"name": run.name, "model": "?", "data": "?", "state": f"{state_name(DAMAGED)}: {say(problem)}",
                "steps": "-", "final loss": "-", "eval loss": "-", "duration": "-", "checkpoints": ""}
    try:
        cfg = saved_config(run)
        model, data = Path(cfg.model.path).name, Path(cfg.data.path).name
        if cfg.train.method != "full":
            model = f"{model} + {cfg.train.method}"  # an adapter run: the column names its base
    except UserError:
        model = data = "?"
    return {
        "name": run.name,
        "model": model,
        "data": data,
        "state": state_name(s.state),
        "steps": f"{s.step}/{s.total_steps or '?'}",
        "final loss": _loss(s.loss),
        "eval loss": _loss(s.eval_loss),
        "duration": fmt_duration(s.run_s),  # the Monitor's "run time": segments added up
        "checkpoints": ", ".join(map(str, s.checkpoints)),
    }


def text_width(text: str) -> int:
    """About how many pixels `text` takes in the table's font: a CJK character is about twice a Latin one."""
    return sum(14 if ord(ch) > 0x2E80 else 8 for ch in str(text))


def column_width(header: str, values, *, with_help: bool = False) -> int:
    """A table column wide enough for its header (and help icon) and its longest value: the grid sized columns by
    their values alone, so headers such as 最终损失 or "Final loss" showed cut off."""
    widest = max([text_width(header) + (22 if with_help else 0), *(text_width(v) for v in values)])
    return min(widest + 28, 400)  # cell padding and the sort arrow; a very long run name still leaves room


def history_frame(runs: list[Path]) -> pd.DataFrame:
    return pd.DataFrame([history_row(r) for r in runs],
                        columns=["name", "model", "data", "state", "steps", "final loss", "eval loss", "duration",
                                 "checkpoints"])


def loss_overlay(runs: list[Path], x_title: str, y_title: str, labels: dict[str, str]) -> alt.Chart | None:
    """Training loss (solid) and eval loss (dashed, with points) of several runs on one chart, one colour per run.
    `labels` names the two kinds in the tab's language."""
    parts = []
    for run in runs:
        rows = [protocol.MetricsRow.from_json(r) for r in read_all_rows(run / protocol.METRICS)]
        for column in ("loss", "eval_loss"):
            kept = [{"step": r.step, column: getattr(r, column)} for r in rows if getattr(r, column) is not None]
            if kept:
                df = pd.DataFrame(kept).drop_duplicates("step", keep="last")
                parts.append(df.rename(columns={column: "value"}).assign(run=run.name, kind=labels[column]))
    if not parts:
        return None
    kinds = [labels["loss"], labels["eval_loss"]]
    return alt.Chart(pd.concat(parts)).mark_line(point=alt.OverlayMarkDef(size=20)).encode(
        x=alt.X("step:Q", title=x_title, axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", title=None, legend=alt.Legend(orient="top")),
        strokeDash=alt.StrokeDash("kind:N", title=None, scale=alt.Scale(domain=kinds, range=[[1, 0], [5, 3]]),
                                  legend=alt.Legend(orient="top")),
        detail="kind:N",
        tooltip=["run", "kind", "step", alt.Tooltip("value:Q", format=".4f")],
    ).properties(height=320)


def _flat(cfg: RunConfig) -> dict[str, object]:
    return {f"{section}.{name}": value for section, fields in cfg.to_dict().items() if isinstance(fields, dict)
            for name, value in fields.items()}


def config_diff(runs: list[Path]) -> pd.DataFrame:
    """The config fields on which the runs differ: one row per field ("section.field"), one column per run. A run
    whose config cannot be read shows "?"."""
    flat = {}
    for run in runs:
        try:
            flat[run.name] = _flat(saved_config(run))
        except UserError:
            flat[run.name] = {}
    fields = sorted({k for f in flat.values() for k in f})
    rows = [{"field": k, **{name: str(f.get(k, "?")) for name, f in flat.items()}} for k in fields
            if len({str(f.get(k, "?")) for f in flat.values()}) > 1]
    return pd.DataFrame(rows, columns=["field", *flat])


def as_new_run(cfg: RunConfig) -> RunConfig:
    """The same config under a fresh (generated) name, for relaunching or editing."""
    return dataclasses.replace(cfg, name="")
