"""The sidebar every page shares: language switch and the active run (state, step, loss), live while it trains."""

from __future__ import annotations

import math
from pathlib import Path

import streamlit as st

from app.i18n import LANGUAGES, phase_text, state_label, t
from app.pages_mode import leave_pages_directory_mode
from app.tab_state import active_run
from trainer_core.runs import protocol
from trainer_core.runs.state import read_state

CARD_REFRESH_S = 2.0


def require_frame() -> None:
    """Make sure this page runs inside streamlit_app.py's navigation and sidebar; call it first on every page.

    A tab that reconnects to /monitor after a dashboard restart would otherwise get the page as a bare script,
    without its sidebar (app.pages_mode says why). Leave that mode and run again: the entry script now runs
    first and picks this same page.
    """
    if leave_pages_directory_mode():
        st.rerun()


def signed_in() -> bool:
    """On a loopback address nobody else can reach the dashboard. Bound to any other address it shows nothing
    until the visitor gives the password (env STUDIO_PASSWORD or `password` in secrets), once per session."""
    from app.auth import THROTTLE, SessionAttempts, configured_password, is_loopback, password_ok

    if is_loopback(st.get_option("server.address") or "") or st.session_state.get("signed_in"):
        return True
    st.title(t("app.title"))
    expected = configured_password(st.secrets)
    if expected is None:
        st.error(t("auth.no_password"), icon=":material/lock:")
        return False
    given = st.text_input(t("auth.password"), type="password", key="auth.password")
    if not given:
        return False
    attempts = st.session_state.setdefault("auth.attempts", SessionAttempts())
    wait = THROTTLE.wait_s(attempts)
    if wait > 0:  # not even compared: a guess during the wait tells the guesser nothing
        st.error(t("auth.wait", s=math.ceil(wait)), icon=":material/timer:")
        return False
    if password_ok(given, expected):
        THROTTLE.succeeded(attempts)
        st.session_state["signed_in"] = True
        st.rerun()
    wait = THROTTLE.failed(attempts, client=st.context.ip_address or "?")
    st.error(t("auth.wrong", s=math.ceil(wait)), icon=":material/lock:")
    return False


def notify_end(name: str, state: str, on_monitor: bool) -> None:
    """Say in the sidebar that the run this tab follows ended while the tab was on another page (the Monitor says it
    itself), until the Monitor is opened. Not a toast: a toast covered the right-hand column of the page (the
    compared replies on the Chat page) for as long as it showed."""
    seen = st.session_state.setdefault("frame.seen", {})
    before, seen[name] = seen.get(name), state
    if on_monitor:
        st.session_state.pop("frame.ended", None)
    elif before in protocol.LIVE and state in protocol.TERMINAL:
        st.session_state["frame.ended"] = (name, state)
    ended = st.session_state.get("frame.ended")
    if ended and ended[0] == name and ended[1] == state:
        icons = {protocol.COMPLETED: ":material/task_alt:", protocol.FAILED: ":material/error:",
                 protocol.STOPPED: ":material/pause:"}
        st.info(t(f"frame.ended.{state}", name=name), icon=icons[state])


def sidebar(page_url: str = "") -> None:
    with st.sidebar:
        st.radio(t("frame.language"), list(LANGUAGES), format_func=LANGUAGES.get, key="lang", horizontal=True,
                 persist_state="session")
        st.divider()
        run = active_run()
        if run is None:
            st.caption(t("frame.no_run"))
            st.page_link("pages/train.py", label=t("frame.start_one"), icon=":material/rocket_launch:")
            return
        state = read_state(run).state
        notify_end(run.name, state, on_monitor=page_url == "monitor")
        live = state in protocol.LIVE
        st.fragment(run_every=CARD_REFRESH_S if live else None)(_run_card)(run, live)


def _run_card(run: Path, live: bool) -> None:
    s = read_state(run)
    with st.container(border=True, key="frame-run"):
        st.markdown(f"**{t('frame.active_run')}**")
        st.text(run.name)
        phase = phase_text(s)
        st.markdown(state_label(s.state) + (f" · {phase}" if phase else ""))
        total, step = s.total_steps or 0, s.step
        if total:
            st.progress(min(step / total, 1.0), text=t("frame.step", step=step, total=total))
        st.caption(t("frame.loss", loss="-" if s.loss is None else f"{s.loss:.4f}"))
        st.page_link("pages/monitor.py", label=t("frame.open_monitor"), icon=":material/monitoring:")
    if live and not s.live:
        st.rerun()  # the run just ended: redraw the whole page once, without the timer
