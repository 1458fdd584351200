"""The Runs page's persona evaluation: start it in the background, show its progress, stop it, and show the stored
results as a table (each figure with its change against the base model) and a chart over checkpoints.

The evaluation itself is `trainer_core.evaluation.persona_eval`; its results live in the run directory, so the page,
the CLI and a later session all read the same numbers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import altair as alt
import pandas as pd

from trainer_core.common.errors import UserError
from trainer_core.evaluation import background
from trainer_core.evaluation import persona_eval as pe

# Shown in this order; the chart draws the ones that are shares or scores between 0 and 1.
METRICS = ("answer_nll", "rouge_l", "bleu4", "ends_by_itself", "identity_in_persona", "breaks_character",
           "lexicon_rate", "style_js", "distinct_2", "repetition", "length_ratio")
CHARTED = ("rouge_l", "ends_by_itself", "identity_in_persona", "breaks_character", "lexicon_rate", "style_js")


@dataclass
class EvalJob:
    """One evaluation running in this dashboard process."""

    models: list[str]
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    label: str = ""
    """The model being evaluated now."""
    done: int = 0
    total: int = 0
    error: BaseException | None = None
    stopped: bool = False

    @property
    def running(self) -> bool:
        return not self.finished.is_set()


_jobs: dict[Path, EvalJob] = {}
_lock = threading.Lock()


def job_for(run: Path) -> EvalJob | None:
    return _jobs.get(Path(run))


def start(run: Path, *, checkpoint: str | None, base: bool, settings: pe.EvalSettings) -> EvalJob:
    """Start evaluating in a background thread (or return the evaluation of this run already running)."""
    run = Path(run)
    models = [label for label, _ in pe.models_of(run, checkpoint)]  # a UserError here is shown before anything runs
    with _lock:
        job = _jobs.get(run)
        if job is not None and job.running:
            return job
        job = _jobs[run] = EvalJob(models=([pe.BASE] if base else []) + models)

    def progress(label: str, done: int, total: int) -> None:
        job.label, job.done, job.total = label, done, total

    def work() -> None:
        try:
            pe.evaluate_run(run, checkpoint=checkpoint, base=base, settings=settings, cancel=job.cancel,
                            progress=progress)
        except pe.Cancelled:
            job.stopped = True
        except BaseException as e:  # shown by the page (a UserError in the tab's language)
            job.error = e
        finally:
            job.finished.set()

    threading.Thread(target=work, name=f"persona-eval-{run.name}", daemon=True).start()
    return job


def estimate(run: Path, *, checkpoint: str | None, base: bool, settings: pe.EvalSettings) -> dict:
    """The most an evaluation will generate: models × (held-out records + probes) replies, each at most
    max_new_tokens long."""
    n_models = len(pe.models_of(run, checkpoint)) + (1 if base else 0)
    saved = pe.eval_dir(run) / pe.PROBES_FILE
    try:
        probes = pe.Probes.load(saved if saved.is_file() else pe.default_probes(_persona(run)))
        n_probes = len(probes.identity)
    except UserError:  # a damaged probe file or config is reported when the evaluation starts
        n_probes = 0
    return pe.estimate(settings.max_records, n_probes, settings, n_models)


def _persona(run: Path) -> str:
    from trainer_core.config.run_config import load_config
    from trainer_core.runs import protocol

    return load_config(Path(run) / protocol.CONFIG).data.persona


def results_frame(results: dict[str, dict]) -> pd.DataFrame:
    """One row per evaluated model (base first), every metric as "value (change against base)"."""
    deltas = pe.compare_to_base(results)
    rows = []
    for label, r in results.items():
        row = {"model": label, "records": r.get("n_records"), "probes": r.get("n_probes")}
        for name in METRICS:
            value = r["metrics"].get(name)
            cell = "—" if not isinstance(value, (int, float)) or value != value else f"{value:.3f}"
            if name in deltas.get(label, {}):
                cell += f" ({deltas[label][name]:+.3f})"
            row[name] = cell
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "records", "probes", *METRICS])


def chart(results: dict[str, dict], x_title: str, y_title: str) -> alt.Chart | None:
    """The 0–1 metrics of every evaluated model in evaluation order (base, checkpoints by step, final)."""
    if not results:
        return None
    order = list(results)
    data = pd.DataFrame([{"model": label, "metric": name, "value": r["metrics"][name]}
                         for label, r in results.items() for name in CHARTED if name in r["metrics"]])
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("model:N", sort=order, title=x_title),
        y=alt.Y("value:Q", title=y_title, scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("metric:N", title=None),
        tooltip=["model", "metric", alt.Tooltip("value:Q", format=".3f")],
    )


REFRESH_S = 1.0
"""How often the progress redraws while an evaluation runs."""


def panel(run: Path, state) -> None:
    """Settings, cost estimate, Start/Stop, progress and the stored results of one run's persona evaluation."""
    import streamlit as st

    from app.i18n import say, t

    job = job_for(run)
    at_end = background.read_status(run)  # eval.persona_at_end's evaluation, in its own process
    running = (job is not None and job.running) or at_end.get("state") == background.RUNNING
    steps = [str(c) for c in reversed(state.checkpoints)]
    choices = ["latest", "all", *steps]
    c1, c2, c3, c4 = st.columns(4, vertical_alignment="bottom")
    which = c1.selectbox(t("eval.models"), choices, key="eval.models", disabled=running,
                         format_func=lambda c: t(f"eval.models.{c}") if c in ("latest", "all") else
                         t("eval.models.step", step=c))
    records = c2.number_input(t("eval.max_records"), 1, 10_000, 200, key="eval.max_records", disabled=running)
    tokens = c3.number_input(t("eval.max_new_tokens"), 1, 4096, 128, key="eval.max_new_tokens", disabled=running)
    results = pe.read_results(run)  # once per page run: the files hold every reply
    base = c4.checkbox(t("eval.base"), value=pe.BASE not in results, key="eval.base",
                       disabled=running, help=t("eval.base_help"))
    checkpoint = None if which == "latest" else which
    try:
        settings = pe.EvalSettings(max_records=int(records), max_new_tokens=int(tokens))
        cost = estimate(run, checkpoint=checkpoint, base=base, settings=settings)
    except UserError as e:
        st.error(say(e), icon=":material/error:")
        return
    st.caption(t("eval.estimate", **cost))
    row = st.container(horizontal=True)
    if row.button(t("eval.start"), key="eval.start", icon=":material/play_arrow:", disabled=running
                  or state.alive, help=t("eval.busy") if state.alive else None):
        try:
            start(run, checkpoint=checkpoint, base=base, settings=settings)
        except UserError as e:
            st.error(say(e), icon=":material/error:")
        else:
            st.rerun()
    if running and row.button(t("eval.stop"), key="eval.stop", icon=":material/stop:"):
        # Honoured within one token; the model being evaluated writes nothing.
        if job is not None and job.running:
            job.cancel.set()
        else:
            background.request_stop(run)
    st.fragment(run_every=REFRESH_S if running else None)(_progress)(run, running)
    frame = results_frame(results)
    if frame.empty:
        st.caption(t("eval.none"))
        return
    st.dataframe(frame, hide_index=True, key="eval.table",
                 column_config={c: st.column_config.Column(t(f"eval.col.{c}") if c in ("model", "records", "probes")
                                                           else c) for c in frame.columns})
    drawn = chart(results, t("eval.x_model"), t("eval.y_value"))
    if drawn is not None:
        st.altair_chart(drawn, width="stretch")


def _progress(run: Path, was_running: bool) -> None:
    import streamlit as st

    from app.i18n import say, t

    job = job_for(run)
    if job is None:
        _background_progress(run, was_running)
        return
    if job.running:
        fraction = job.done / job.total if job.total else 0.0
        st.progress(fraction, text=t("eval.progress", model=job.label or "…", done=job.done, total=job.total or "?",
                                     models=", ".join(job.models)))
    elif job.stopped:
        st.info(t("eval.stopped"), icon=":material/stop_circle:")
    elif job.error is not None:
        st.error(say(job.error) if isinstance(job.error, UserError) else t("eval.failed", error=str(job.error)),
                 icon=":material/error:")
    if was_running and not job.running:
        st.rerun(scope="app")  # finished: redraw the buttons and the results once, and stop the timer


def _background_progress(run: Path, was_running: bool) -> None:
    """Progress and outcome of the evaluation eval.persona_at_end started when training completed."""
    import streamlit as st

    from app.i18n import t

    status = background.read_status(run)
    state = status.get("state")
    if state == background.RUNNING:
        total = status.get("total") or 0
        st.progress(status.get("done", 0) / total if total else 0.0,
                    text=t("eval.progress", model=status.get("label") or "…", done=status.get("done", 0),
                           total=total or "?", models=", ".join(status.get("models") or [])))
    elif state == background.STOPPED:
        st.info(t("eval.stopped"), icon=":material/stop_circle:")
    elif state == background.FAILED:
        st.error(t("eval.failed", error=status.get("error") or "?"), icon=":material/error:")
    if was_running and state != background.RUNNING:
        st.rerun(scope="app")
