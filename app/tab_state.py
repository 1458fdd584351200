"""What a browser tab remembers: the active run. Everything else about a run is read from its directory."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from trainer_core.runs.registry import list_runs, read_listed


def active_run() -> Path | None:
    """The run this tab is looking at: the one picked last, else the newest live run, else the newest run.

    The fallback reads only the disk, so a fresh tab (or a restarted dashboard) re-attaches to a running job.
    """
    runs = list_runs()
    picked = st.session_state.get("active_run")
    for run in runs:
        if run.name == picked:
            return run
    live = [run for run in runs if (state := read_listed(run)[0]) is not None and state.live]
    return (live or runs or [None])[0]


def set_active_run(run: Path | str) -> None:
    st.session_state["active_run"] = Path(run).name


def runs_or_stop(empty_label: str) -> dict[str, Path]:
    """All runs by name; with none yet, say so, point at the Train page and end the page here."""
    from app.i18n import t

    runs = {r.name: r for r in list_runs()}
    if not runs:
        st.info(t(empty_label))
        st.page_link("pages/train.py", label=t("frame.start_one"), icon=":material/rocket_launch:")
        st.stop()
    return runs
