"""The Train page's offer to import a Qwen-1 (Qwen-7B-Chat) folder as a native Qwen2 model, in place of the
remote-code box: the converted folder trains, chats and exports with no remote code."""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from app import train_form as form
from app.i18n import say, t
from trainer_core.common import paths
from trainer_core.common.errors import UserError
from trainer_core.models.qwen1_import import import_qwen1, is_qwen1_dir

DEST_NAME = "train.qwen1_dest"
DEST_FOR = "train.qwen1_dest_for"  # the source folder DEST_NAME was suggested for
OUTCOME = "train.qwen1_outcome"  # ("ok", folder, seq_length or None) or ("error", message), shown once
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _import(source: str) -> None:
    """Button callback: runs before the page is drawn again, so it may point the model picker at the new folder."""
    name = st.session_state.get(DEST_NAME, "").strip()
    if not SAFE_NAME.fullmatch(name):
        st.session_state[OUTCOME] = ("error", t("qwen1.bad_name", name=name))
        return
    bar = st.progress(0.0, text=t("qwen1.progress", percent=0))
    shown = [-1]

    def progress(done: int, total: int, what: str) -> None:
        percent = 100 * done // max(total, 1)
        if percent != shown[0]:  # one redraw per percent, however many tensors
            shown[0] = percent
            bar.progress(percent / 100, text=t("qwen1.progress", percent=percent))

    try:
        result = import_qwen1(source, paths.MODELS_DIR / name, progress=progress)
    except UserError as e:
        st.session_state[OUTCOME] = ("error", say(e))
        return
    finally:
        bar.empty()
    form._set_model(str(result.dest))
    st.session_state[OUTCOME] = ("ok", str(result.dest), result.seq_length if result.notes else None)


def offer_qwen1_import(model_path: str) -> bool:
    """Draw the import offer when model_path is a Qwen-1 checkpoint; False (nothing drawn) otherwise, so the page
    shows the remote-code box instead. The result of the last import is shown either way."""
    outcome = st.session_state.pop(OUTCOME, None)
    if outcome and outcome[0] == "ok":
        st.success(t("qwen1.done", dest=outcome[1]), icon=":material/check_circle:")
        if outcome[2]:
            st.caption(t("qwen1.not_carried", seq_length=outcome[2]))
    if not model_path or not is_qwen1_dir(model_path):
        return False
    with st.container(border=True, key="train-qwen1"):
        st.info(t("qwen1.offer"), icon=":material/swap_horiz:")
        if st.session_state.get(DEST_FOR) != model_path:  # a fresh default name for each source folder
            st.session_state[DEST_FOR] = model_path
            st.session_state[DEST_NAME] = f"{Path(model_path).name}-qwen2"
        st.text_input(t("qwen1.dest"), key=DEST_NAME, help=t("qwen1.dest_help", models=paths.MODELS_DIR))
        st.button(t("qwen1.button"), key="train.qwen1_import", type="primary", icon=":material/download:",
                  on_click=_import, args=(model_path,))
        if outcome and outcome[0] == "error":
            st.error(outcome[1], icon=":material/error:")
    return True
