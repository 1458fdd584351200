"""Runs: every run on disk, its saved config, loss curves side by side; relaunch, clone and edit, export, delete."""

import streamlit as st

from app import adapter_view, downloads
from app import eval_view as pe_view
from app import runs_view as rv
from app import train_form as form
from app.frame import require_frame
from app.i18n import say, t
from app.run_actions import UserError, delete_run, launch, read_state
from app.tab_state import active_run, runs_or_stop, set_active_run

require_frame()
st.title(t("runs.title"))
runs = runs_or_stop("runs.none")

table = rv.history_frame(list(runs.values()))
st.dataframe(table, hide_index=True, key="runs.table",
             column_config={c: st.column_config.Column(
                 t(f"runs.col.{c}"), help=t("mon.run_time_help") if c == "duration" else None,
                 width=rv.column_width(t(f"runs.col.{c}"), table[c], with_help=c == "duration"))
                 for c in table.columns})

st.subheader(t("runs.overlay"))
if "p.runs.compare" in st.session_state:
    st.session_state["p.runs.compare"] = [n for n in st.session_state["p.runs.compare"] if n in runs]
else:
    st.session_state["p.runs.compare"] = list(runs)[:3]
chosen = st.multiselect(t("runs.overlay_pick"), list(runs), key="p.runs.compare", persist_state="session")
chart = rv.loss_overlay([runs[n] for n in chosen], t("mon.x_step"), t("mon.loss"),
                       {"loss": t("mon.loss"), "eval_loss": t("mon.eval_loss")})
if chart is None:
    st.caption(t("mon.no_metrics"))
else:
    st.altair_chart(chart, width="stretch")
if len(chosen) > 1:
    diff = rv.config_diff([runs[n] for n in chosen])
    st.markdown(f"**{t('runs.diff')}**")
    if diff.empty:
        st.caption(t("runs.no_diff"))
    else:
        st.dataframe(diff, hide_index=True, key="runs.diff",
                     column_config={"field": st.column_config.Column(t("runs.diff_field"))})

st.subheader(t("runs.manage"))
if st.session_state.get("p.runs.pick") not in runs:
    active = active_run()
    st.session_state["p.runs.pick"] = active.name if active is not None else next(iter(runs))
run = runs[st.selectbox(t("runs.pick"), list(runs), key="p.runs.pick", persist_state="session")]
state = read_state(run)
try:
    cfg = rv.saved_config(run)
except UserError as e:
    cfg = None
    st.error(say(e), icon=":material/error:")

row = st.container(horizontal=True)  # one row of buttons, each as wide as its label
if row.button(t("runs.relaunch"), key="runs.relaunch", icon=":material/replay:", disabled=cfg is None,
               help=t("runs.relaunch_help")):
    try:
        with st.spinner(t("train.launching")):
            new = launch(rv.as_new_run(cfg))
    except UserError as e:
        st.error(t("train.refused", error=say(e)), icon=":material/block:")
    else:
        set_active_run(new)
        st.switch_page("pages/monitor.py")
if row.button(t("runs.clone"), key="runs.clone", icon=":material/edit:", disabled=cfg is None,
               help=t("runs.clone_help")):
    form.load_into_form(rv.as_new_run(cfg))
    st.switch_page("pages/train.py")
if row.button(t("runs.monitor"), key="runs.monitor", icon=":material/monitoring:"):
    set_active_run(run)
    st.switch_page("pages/monitor.py")
if row.button(t("runs.delete"), key="runs.delete", icon=":material/delete:", disabled=state.alive,
               help=t("runs.delete_help")):
    st.session_state["runs.confirm"] = run.name
if st.session_state.get("runs.confirm") == run.name:
    st.warning(t("runs.confirm", name=run.name), icon=":material/warning:")
    confirm = st.container(horizontal=True)
    if confirm.button(t("runs.delete_yes"), key="runs.delete_yes", type="primary"):
        st.session_state.pop("runs.confirm")
        try:
            delete_run(run)
        except UserError as e:
            st.error(say(e), icon=":material/error:")
        else:
            if st.session_state.get("active_run") == run.name:
                st.session_state.pop("active_run")
            st.rerun()
    if confirm.button(t("runs.delete_no"), key="runs.delete_no"):
        st.session_state.pop("runs.confirm")
        st.rerun()

adapter_view.runs_panel(run, state, cfg)
with st.expander(t("runs.export"), expanded=False):
    downloads.export_panel(run)
with st.expander(t("eval.title"), expanded=bool(pe_view.job_for(run)) or pe_view.background.running(run)):
    pe_view.panel(run, state)
st.markdown(f"**{t('dl.title')}**")
downloads.model_buttons(run)

st.markdown(f"**{t('runs.saved_config')}**")
if cfg is not None:
    downloads.config_button(run)
    st.code(cfg.to_yaml(), language="yaml")
