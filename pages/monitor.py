"""Monitor: one run's progress, curves, memory and log, live while it trains; stop, force stop or resume it."""

import streamlit as st

from app import adapter_view
from app import monitor_view as mv
from app.frame import require_frame
from app.i18n import say, t
from app.run_actions import UserError, protocol, read_state, resume
from app.tab_state import active_run, runs_or_stop, set_active_run

require_frame()
st.title(t("mon.title"))
runs = runs_or_stop("mon.no_runs")

st.session_state["mon.run"] = active_run().name
st.selectbox(t("mon.run"), list(runs), key="mon.run", on_change=lambda: set_active_run(st.session_state["mon.run"]))
run = runs[st.session_state["mon.run"]]
s = read_state(run)
adapter_view.monitor_caption(run, s)  # a lora/qlora run: its base, trainable parameters, adapter size

# Fixed slots, whatever the state: a run that ends mid-view redraws with a notice here, and the panel below must
# keep its place in the page (a shifted panel was drawn inside the button row until the redraw finished).
with st.container():
    if s.state == protocol.FAILED:
        st.error(t("mon.failed", error=mv.failure_reason(s)), icon=":material/error:")
    elif s.state == protocol.COMPLETED:
        st.success(t("mon.completed"), icon=":material/task_alt:")
        if s.note_text is not None or s.note:  # how it ended, when something died after final/ was complete
            st.caption(say(s.note_text) if s.note_text is not None else s.note)
        if st.button(t("mon.chat_now"), key="mon.chat_now", icon=":material/chat:"):
            st.session_state["chat.open"] = run.name  # the Chat page opens on this run, whatever it showed before
            st.switch_page("pages/chat.py")
    elif s.state == protocol.STOPPED:
        st.info(t("mon.stopped", checkpoints=", ".join(map(str, s.checkpoints)) or "-"), icon=":material/pause:")
    elif s.supervisor_lost:
        st.warning(t("mon.supervisor_lost", n=s.supervisor_lost), icon=":material/warning:")
    elif s.heartbeat_age_s is not None:  # launched by launch_node.sh or Slurm: no supervisor here
        st.caption(t("mon.external", age=f"{s.heartbeat_age_s:.0f}"))

row = st.container(horizontal=True)  # one row of buttons, each as wide as its label
if row.button(t("mon.stop"), key="mon.stop", icon=":material/save:", help=t("mon.stop_help"),
               disabled=s.state not in (protocol.STARTING, protocol.RUNNING)):
    mv.stop_in_background(run, force=False)
    st.session_state["mon.stop_asked"] = run.name
can_force = s.alive and not s.terminal
if row.button(t("mon.force_stop"), key="mon.force_stop", icon=":material/dangerous:", help=t("mon.force_help"),
               disabled=not can_force):
    st.session_state["mon.force_confirm"] = run.name  # nothing is saved: ask first, as Delete does
resumable = s.state in (protocol.STOPPED, protocol.FAILED)
if row.button(t("mon.resume"), key="mon.resume", icon=":material/play_arrow:", help=t("mon.resume_help"),
               disabled=not resumable):
    try:
        with st.spinner(t("mon.resuming")):
            resume(run, checkpoint=st.session_state.get(mv.resume_key(run)))
    except UserError as e:
        st.error(say(e), icon=":material/error:")
    else:
        st.rerun()
if resumable and s.checkpoints:
    mv.resume_choice(row, run, s.checkpoints)

with st.container():  # a fixed place for the notices, so the live panel below never moves into the button row
    if st.session_state.get("mon.force_confirm") == run.name:
        if not can_force:  # the run ended meanwhile: nothing left to end
            st.session_state.pop("mon.force_confirm")
        else:
            st.warning(t("mon.force_confirm", name=run.name), icon=":material/warning:")
            confirm = st.container(horizontal=True)
            if confirm.button(t("mon.force_yes"), key="mon.force_yes", type="primary"):
                st.session_state.pop("mon.force_confirm")
                mv.stop_in_background(run, force=True)
                st.session_state["mon.stop_asked"] = run.name
            if confirm.button(t("mon.force_no"), key="mon.force_no"):
                st.session_state.pop("mon.force_confirm")
                st.rerun()
    if st.session_state.get("mon.stop_asked") == run.name and s.live:
        # Inline, not a toast: a toast sits over the right-hand column (the charts) while the run stops.
        st.info(t("mon.stop_requested"), icon=":material/pause:")

live = s.live
st.fragment(run_every=mv.REFRESH_S if live else None)(mv.live_panel)(run, live)
