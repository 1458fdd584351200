"""Monitor page logic: incremental reads of a run's metrics and resource samples, charts, the highlighted log tail."""

from __future__ import annotations

import html
import sys
import threading
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from app.i18n import option_labels, phase_text, say, state_name, t
from trainer_core.config.memory import fmt_bytes
from trainer_core.runs import protocol
from trainer_core.runs.state import read_state
from trainer_core.common.tailing import read_new_rows, tail_lines

REFRESH_S = 1.0
LOG_LINES = 200
MAX_POINTS = 1500


def new_rows(run: Path, filename: str, parse=None) -> list[dict]:
    """All rows of a run's JSONL file, reading only what was appended since this tab last looked; `parse` (e.g.
    metrics rows through `MetricsRow`) applies to each new row once."""
    cache = st.session_state.setdefault("mon.rows", {})
    path = run / filename
    rows, offset, seen = cache.get(str(path), ([], 0, None))
    try:
        info = path.stat()
        size, file_id = info.st_size, (info.st_dev, info.st_ino)
    except FileNotFoundError:
        size, file_id = 0, None
    # The file was replaced: a resume from an earlier checkpoint rewrote it without the abandoned rows (by then the
    # resumed run may have written it past the old length), or the run was deleted and made again under its name.
    if size < offset or file_id != seen:
        rows, offset = [], 0
    added, offset = read_new_rows(path, offset)
    if parse is not None:
        added = [parse(r) for r in added]
    rows = rows + added
    cache[str(path)] = (rows, offset, file_id)
    return rows


def _metrics_row(raw: dict) -> dict:
    """A metrics.jsonl row as the protocol reads it (unknown keys kept, missing ones absent)."""
    return protocol.MetricsRow.from_json(raw).to_json()


def _thin(df: pd.DataFrame) -> pd.DataFrame:
    step = max(1, len(df) // MAX_POINTS)
    return df.iloc[::step] if step > 1 else df


def metric_frames(rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, evaluation rows) keyed by step; a resumed run's re-logged steps keep their newest value."""
    df = pd.DataFrame(rows)
    if df.empty or "step" not in df:
        return pd.DataFrame(), pd.DataFrame()
    train = df[df["loss"].notna()] if "loss" in df else df.iloc[0:0]
    evals = df[df["eval_loss"].notna()] if "eval_loss" in df else df.iloc[0:0]
    return (train.drop_duplicates("step", keep="last").sort_values("step"),
            evals.drop_duplicates("step", keep="last").sort_values("step"))


def long_frame(df: pd.DataFrame, x: str, columns: dict[str, str]) -> pd.DataFrame:
    """Wide to long for a multi-series chart: columns maps a column to its legend label; missing values dropped."""
    parts = [pd.DataFrame({x: df[x], "series": label, "value": df[col]}) for col, label in columns.items() if col in df]
    if not parts:
        return pd.DataFrame(columns=[x, "series", "value"])
    return _thin(pd.concat(parts).dropna(subset=["value"]))


X_AXES = ("step", "epoch", "tokens")  # what the metric curves can be drawn over: each is a column of metrics.jsonl


def ema(values: pd.Series, weight: float) -> pd.Series:
    """Exponential moving average with TensorBoard's bias correction, so the first points are not pulled to 0."""
    out, acc = [], 0.0
    for i, v in enumerate(values, start=1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** i))
    return pd.Series(out, index=values.index, dtype=float)


def line_chart(df: pd.DataFrame, x: str, x_title: str, y_title: str, *, y_format: str | None = None,
               log_scale: bool = False) -> alt.Chart:
    # "~g": a flat series (one point, or a constant) otherwise gets ticks like "11.936600" or "1.100000"
    axis = alt.Axis(format=y_format or "~g")
    scale = alt.Scale(type="log") if log_scale else alt.Scale(zero=False)
    x_axis = {"step": alt.Axis(tickMinStep=1, format="d"), "tokens": alt.Axis(format="~s")}.get(x, alt.Axis())
    order = list(dict.fromkeys(df["series"]))  # colours follow the series order, not the labels' alphabet
    return alt.Chart(df).mark_line(point=len(df) < 60).encode(
        x=alt.X(f"{x}:Q", title=x_title, axis=x_axis),
        y=alt.Y("value:Q", title=y_title, axis=axis, scale=scale),
        color=alt.Color("series:N", title=None, sort=order, scale=alt.Scale(domain=order),
                        legend=alt.Legend(orient="top")),
        tooltip=[x, "series", alt.Tooltip("value:Q", format=".4g")],
    ).properties(height=220)


STOPPED_GAP_S = 60.0
"""A gap between memory samples longer than this is time the run was not running (samples come every few seconds)."""


def resource_frames(rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """(per-device memory, host RAM) as long frames over elapsed seconds, and whether the first is GPU memory."""
    if not rows:
        empty = pd.DataFrame(columns=["t", "series", "value"])
        return empty, empty, False
    on_gpu = any(r.get("gpus") for r in rows)
    dev, host = [], []
    t_s, last = 0.0, rows[0]["time"]
    for r in rows:
        # The axis counts run time, as the Run time figure does: a gap with no samples (the run stopped, then was
        # resumed) adds nothing, so the line does not run straight across the stopped hours.
        gap = r["time"] - last
        t_s += gap if gap <= STOPPED_GAP_S else 0.0
        last = r["time"]
        if on_gpu:
            # A GPU whose memory query failed in that sample has no figure (the sampler reports the error once).
            dev += [{"t": t_s, "series": f"GPU {g['index']}", "value": g["used_bytes"] / 2**30}
                    for g in r.get("gpus", []) if "used_bytes" in g]
        else:
            dev += [{"t": t_s, "series": f"rank {x['rank'] if x['rank'] is not None else x['pid']}",
                     "value": x["rss_bytes"] / 2**30} for x in r.get("ranks", [])]
        host.append({"t": t_s, "series": t("mon.host_used"), "value": r["host_used_bytes"] / 2**30})
        host.append({"t": t_s, "series": t("mon.host_total"), "value": r["host_total_bytes"] / 2**30})
    return _thin(pd.DataFrame(dev)), _thin(pd.DataFrame(host)), on_gpu


def log_html(lines: list[str]) -> str:
    """The log tail as escaped text, error lines in red. Log text is never interpreted as HTML."""
    out = []
    for line in lines:
        text = html.escape(line)
        if protocol.is_error_line(line):
            text = f'<span style="color:#b71c1c; background:#fdecea; font-weight:600">{text}</span>'
        out.append(text)
    style = ("font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.78rem; white-space: pre-wrap; "
             "word-break: break-all; background:#fafafa; border:1px solid #e0e0e0; border-radius:6px; padding:8px; "
             "max-height: 420px; overflow-y: auto; display:flex; flex-direction:column-reverse;")
    # column-reverse keeps the newest line in view without any script.
    return f'<div class="log-tail" style="{style}"><div>{"<br>".join(out)}</div></div>'


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _stop(run: Path, force: bool) -> None:
    from trainer_core.runs.lifecycle import stop

    try:
        stop(run, force=force)
    except Exception as e:  # the page shows the state from disk; the reason goes to the server log
        print(f"stop {run.name} failed: {e}", file=sys.stderr)


def stop_in_background(run: Path, force: bool) -> None:
    """Ask a run to stop without holding the page: a normal stop waits for the trainer's checkpoint."""
    threading.Thread(target=_stop, args=(run, force), daemon=True, name=f"stop-{run.name}").start()


def resume_key(run: Path) -> str:
    return f"mon.resume_step.{run.name}"


def resume_choice(row, run: Path, checkpoints: list[int]) -> None:
    """The checkpoint Resume starts from (newest first, the newest preselected), and what resuming from an older
    one removes."""
    newest, key = checkpoints[-1], resume_key(run)
    if st.session_state.get(key) not in checkpoints:
        st.session_state[key] = newest
    labels = {c: t("mon.resume_newest" if c == newest else "mon.resume_step", step=c) for c in checkpoints}
    step = row.selectbox(t("mon.resume_from"), list(reversed(checkpoints)), key=key,
                         format_func=labels.get, label_visibility="collapsed", width=200)
    later = [c for c in checkpoints if c > step]
    if later:
        st.warning(t("mon.resume_drops", step=step, later=", ".join(map(str, later))), icon=":material/warning:")


def failure_reason(s: protocol.Status) -> str:
    """Why the run failed, in the tab's language: the coded reason where status.json has one; a run directory
    written before `error_text` existed shows its English `error` as it is."""
    if s.error_text is not None:
        return say(s.error_text)
    return s.error or t("mon.unknown_error")


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and pd.isna(value)) else format(value, spec)


@st.cache_data(show_spinner=False, max_entries=8)
def _estimate(config_path: str, mtime: float) -> int | None:
    from trainer_core.config.run_config import load_config
    from trainer_core.common.errors import UserError
    from trainer_core.training.step_estimate import estimate_total_steps

    try:
        return estimate_total_steps(load_config(Path(config_path)))
    except (UserError, OSError, ValueError):
        return None  # the trainer will report the data problem itself; the page shows "?" meanwhile


def total_steps_text(run: Path, status: protocol.Status) -> str:
    """The run's total steps as the trainer reports it, or before it does (start-up) an estimate from the run's
    config and data, marked "≈"."""
    if status.total_steps:
        return str(status.total_steps)
    config = run / protocol.CONFIG
    try:
        estimate = _estimate(str(config), config.stat().st_mtime)
    except OSError:
        estimate = None
    return f"≈{estimate}" if estimate else "?"


def curve_controls() -> tuple[str, float]:
    """The x-axis of the metric curves (steps, epochs or tokens) and the loss smoothing weight (0: none)."""
    c1, c2 = st.columns(2)
    x = c1.radio(t("mon.x_axis"), X_AXES, key="p.mon.x", horizontal=True, persist_state="session",
                 format_func=option_labels("mon.x_"))
    smoothing = c2.slider(t("mon.smoothing"), 0.0, 0.99, 0.0, 0.01, key="p.mon.smooth", persist_state="session",
                          help=t("mon.smoothing_help"))
    return x, smoothing


def live_panel(run: Path, live: bool) -> None:
    """Progress, charts, memory and log of one run; redrawn every second while the run is alive."""
    s = read_state(run)
    train, evals = metric_frames(new_rows(run, protocol.METRICS, _metrics_row))
    last = train.iloc[-1].to_dict() if not train.empty else {}
    progress_row(run, s, last)
    metric_charts(train, evals)
    memory_charts(run, last)
    st.markdown(f"**{t('mon.log')}**")
    lines = tail_lines(run / protocol.LOG, LOG_LINES)
    if lines:
        st.html(log_html(lines))
    else:
        st.caption(t("mon.no_log"))
    if live and not s.live:
        st.rerun()  # the run ended: redraw the page once (buttons, error box) and stop the timer


def progress_row(run: Path, s: protocol.Status, last: dict) -> None:
    """The progress bar and the headline figures: step, losses, throughput, ETA, run time."""
    step, total = s.step, s.total_steps or 0
    total_text = total_steps_text(run, s)
    with st.container(key="mon-progress"):
        phase = phase_text(s)
        starting = s.live and s.phase in protocol.STARTUP_PHASES and s.phase_total
        # While starting, the bar counts start-up steps: "启动中 · 加载模型 4/6" fills it to 4/6.
        st.progress(min((s.phase_done or 0) / s.phase_total, 1.0) if starting
                    else min(step / total, 1.0) if total else 0.0,
                    text=t("mon.progress", step=step, total=total_text,
                           state=state_name(s.state) + (f" · {phase}" if phase else "")))
        c = st.columns(6)
        c[0].metric(t("mon.step"), f"{step} / {total_text}", help=None if total else t("mon.total_estimate"))
        c[1].metric(t("mon.loss"), _fmt(s.loss, ".4f"))
        c[2].metric(t("mon.eval_loss"), _fmt(s.eval_loss, ".4f"))
        c[3].metric(t("mon.tokens_s"), _fmt(last.get("tokens_per_s"), ",.0f"),
                    help=t("mon.label_tokens_s", n=_fmt(last.get("label_tokens_per_s"), ",.0f")))
        training = s.live and s.phase in (None, protocol.PHASE_TRAINING)
        c[4].metric(t("mon.eta"), fmt_duration(s.eta_s) if training else "-")  # none once training is over
        c[5].metric(t("mon.elapsed"), fmt_duration(s.run_s), help=t("mon.run_time_help"))


def metric_charts(train: pd.DataFrame, evals: pd.DataFrame) -> None:
    """Loss (with the evaluation loss and an optional smoothed curve), learning rate, gradient norm, throughput."""
    x, smoothing = curve_controls()
    if x not in train or (not train.empty and train[x].isna().all()):
        x = "step"  # rows written before the column existed (or an empty run) fall back to steps
    step_t = t(f"mon.x_{x}")
    c1, c2 = st.columns(2)
    loss_cols = {"loss": t("mon.loss")}
    if smoothing > 0 and not train.empty:
        train = train.assign(loss_ema=ema(train["loss"], smoothing))
        loss_cols["loss_ema"] = t("mon.loss_smoothed", w=smoothing)
    loss_df = pd.concat([long_frame(train, x, loss_cols),
                         long_frame(evals, x, {"eval_loss": t("mon.eval_loss")}) if x in evals else None])
    with c1.container(key="mon-loss-chart"):
        st.markdown(f"**{t('mon.chart.loss')}**")
        if loss_df.empty:
            st.caption(t("mon.no_metrics"))
        else:
            st.altair_chart(line_chart(loss_df, x, step_t, t("mon.loss")), width="stretch")
    with c2:
        st.markdown(f"**{t('mon.chart.lr')}**")
        if "lr" in train:
            st.altair_chart(line_chart(long_frame(train, x, {"lr": t("mon.lr")}), x, step_t, t("mon.lr"),
                                       y_format=".1e"), width="stretch")
    c1, c2 = st.columns(2)
    with c1:
        st.markdown(f"**{t('mon.chart.grad_norm')}**")
        if "grad_norm" in train:
            st.altair_chart(line_chart(long_frame(train, x, {"grad_norm": t("mon.grad_norm")}), x, step_t,
                                       t("mon.grad_norm")), width="stretch")
    with c2:
        st.markdown(f"**{t('mon.chart.tokens')}**")
        if "tokens_per_s" in train:
            cols = {"tokens_per_s": t("mon.tokens_s"), "label_tokens_per_s": t("mon.label_tokens")}
            st.altair_chart(line_chart(long_frame(train, x, cols), x, step_t, t("mon.tokens_s")),
                            width="stretch")


def memory_charts(run: Path, last: dict) -> None:
    """Per-device memory (GPU, or each CPU rank's resident memory) and host RAM over time."""
    dev, host, on_gpu = resource_frames(new_rows(run, protocol.RESOURCES))
    c1, c2 = st.columns(2)
    with c1:
        st.markdown(f"**{t('mon.chart.gpu_mem') if on_gpu else t('mon.chart.rank_mem')}**")
        if dev.empty:
            st.caption(t("mon.no_samples"))
        else:
            st.altair_chart(line_chart(dev, "t", t("mon.x_time"), "GiB"), width="stretch")
        if last.get("peak_mem_bytes"):
            peaks = last["peak_mem_bytes"] if isinstance(last["peak_mem_bytes"], list) else [last["peak_mem_bytes"]]
            st.caption(t("mon.peak", peaks=", ".join(fmt_bytes(int(p)) for p in peaks)))
    with c2:
        st.markdown(f"**{t('mon.chart.host')}**")
        if not host.empty:
            st.altair_chart(line_chart(host, "t", t("mon.x_time"), "GiB"), width="stretch")
