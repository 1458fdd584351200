"""Browser downloads of a run's files (its model folders as zip files, its config.yaml) and loading a saved
config.yaml into the Train form.

A model folder goes through the server's own download route (app.file_route): the zip is made while it is sent,
so neither the server's memory nor its disk holds a copy, whatever the size. The link is a plain `<a download>`,
so the browser saves the file without leaving the page. config.yaml is a few KB and uses Streamlit's button.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import streamlit as st

from app import file_route
from app.i18n import say, t
from trainer_core.config.memory import fmt_bytes
from trainer_core.common.errors import UserError
from trainer_core.runs import protocol

CONFIG_MAX_BYTES = 256 * 1024
"""Largest file taken as a run config (one is a few KB)."""
UPLOAD_KEY = "train.config_upload"
LINK_STYLE = ("display:inline-flex;align-items:center;gap:.4rem;padding:.25rem .75rem;margin:.1rem 0;"
              "border:1px solid rgba(49,51,63,.2);border-radius:.5rem;text-decoration:none;color:inherit")


def _link(folder: Path, top: str) -> str:
    """This tab's download link for a folder, minted once and renewed when it is about to expire (a page run must
    not mint a token per rerun: each is kept by the server until it expires)."""
    links = st.session_state.setdefault("dl.links", {})
    key = (str(folder), top, (folder / protocol.COMPLETE_MARKER).stat().st_mtime_ns)
    url, expires = links.get(key, ("", 0.0))
    if expires - time.time() < file_route.GRANT_TTL_S / 4:
        url, expires = links[key] = file_route.grant(folder, top)
    return url


def model_buttons(run: Path) -> None:
    """One download link per complete model folder of the run (final/ and each export), as a zip."""
    from trainer_core.models.archive import folder_bytes, model_folders

    folders = model_folders(run)
    if not folders:
        st.caption(t("dl.no_models"))
        return
    for folder in folders:
        name = f"{run.name}-{folder.name}"
        label = t("dl.model", name=name, size=fmt_bytes(folder_bytes(folder)))
        if not file_route.mounted():
            st.caption(t("dl.no_route", name=name, path=str(folder)))
            continue
        st.html(f'<a href="{html.escape(_link(folder, name))}" download="{html.escape(name)}.zip" '
                f'style="{LINK_STYLE}">⬇ {html.escape(label)}</a>')


def config_button(run: Path) -> None:
    st.download_button(t("dl.config"), (run / protocol.CONFIG).read_bytes(), file_name=f"{run.name}.yaml",
                       mime="application/x-yaml", key="dl.config", icon=":material/download:", on_click="ignore")


def parse_config(name: str, data: bytes):
    """A `RunConfig` from an uploaded YAML file, or a UserError naming the file and what is wrong with it."""
    import yaml

    from trainer_core.config.run_config import SAFE_LOADER, config_from_dict

    if len(data) > CONFIG_MAX_BYTES:
        raise UserError("app.config_too_big", "{name} is {size}, far more than a run config (a few KB): pick the "
                        "config.yaml of a run", name=name, size=fmt_bytes(len(data)))
    try:
        raw = yaml.load(data.decode("utf-8"), Loader=SAFE_LOADER)
    except UnicodeDecodeError:
        raise UserError("app.config_not_text", "{name} is not UTF-8 text: pick a config.yaml file",
                        name=name) from None
    except yaml.YAMLError as e:
        raise UserError("app.config_not_yaml", "{name} is not valid YAML: {reason}", name=name,
                        reason=str(e).splitlines()[0]) from None
    except RecursionError:
        raise UserError("app.config_too_deep", "{name} is nested too deeply; a run config has two levels",
                        name=name) from None
    if not isinstance(raw, dict):
        raise UserError("app.config_not_mapping", "{name} must hold a mapping (model:, data:, train:, ...), not "
                        "{kind}", name=name, kind=type(raw).__name__)
    return config_from_dict(raw)


def load_uploaded_config() -> None:
    """on_change of the Train page's config uploader (before the widgets are drawn, so the form can be filled): a
    valid file fills the form under a new run name; a bad one is reported and leaves the form as it was."""
    import dataclasses

    from app.train_form import load_into_form

    st.session_state.pop("train.config_result", None)
    upload = st.session_state.get(UPLOAD_KEY)
    if upload is None:
        return
    try:
        cfg = parse_config(upload.name, upload.getvalue())
    except UserError as e:
        st.session_state["train.config_result"] = ("error", e)
        return
    load_into_form(dataclasses.replace(cfg, name=""))  # a fresh name, as Clone does: the old one is taken
    st.session_state["train.config_result"] = ("ok", upload.name)


def config_uploader() -> None:
    """The Train page's "load a saved config.yaml" box, with what became of the last file."""
    with st.expander(t("train.load_config"), icon=":material/upload_file:"):
        st.file_uploader(t("train.load_config_pick"), type=["yaml", "yml"], key=UPLOAD_KEY,
                         on_change=load_uploaded_config)
        kind, value = st.session_state.get("train.config_result", (None, None))
        if kind == "ok":
            st.success(t("train.config_loaded", name=value), icon=":material/check:")
        elif kind == "error":
            st.error(say(value), icon=":material/error:")
