"""A browser tab's Data and Train form kept as a draft on disk, so a server restart does not reset it (issue 31).

`st.session_state` dies with the server. After a restart Streamlit's frontend reconnects by itself and reruns the
page with the tab's current URL, query string included, in a brand-new session. So the tab carries only a random
draft id in its URL (`?draft=<32 hex digits>`), and the form's values live in `<cache>/form_drafts/<id>.json`:
a long persona or a server path does not go into a URL (length limits, history, links people share), and the id
names nothing a user chose. The id is re-added on every run because a page switch clears the query string.

Drafts are written atomically, only when the form changed, at most `MAX_BYTES` each and `MAX_DRAFTS` in all (the
oldest are deleted). Only known keys with plain values are restored; an uploaded file only while it is still in
the uploads folder. A tab whose draft cannot be read gets the quickstart form and a notice saying so.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import streamlit as st

from trainer_core.common import paths
from trainer_core.common.atomic import write_text_atomic

PARAM = "draft"
ID_RE = re.compile(r"[0-9a-f]{32}")
MAX_BYTES = 256 * 1024
"""A larger draft (a persona of a book's length) is not written: the form still works, only a restart resets it."""
MAX_DRAFTS = 500
"""Drafts kept on disk; each write beyond this deletes the oldest (tabs long closed)."""
ID = "draft.id"
SAVED = "draft.saved"
NOTICE = "draft.notice"
FRESH = "draft.fresh"
# What a draft holds besides the Train form's `p.f.*` widgets: the Data page's source choice and typed path, and
# the file uploaded in this tab.
DATA_KEYS = ("p.data.source", "p.data.server_path", "data.last_upload")


FOLDER = paths.CACHE_DIR / "form_drafts"
"""Where drafts live: beside the encoded-data cache, never a path from the request."""


def folder() -> Path:
    return FOLDER


def _draft_file(draft_id: str) -> Path:
    return folder() / f"{draft_id}.json"  # draft_id matched ID_RE: no separators, no dots


def _plain(value) -> bool:
    if isinstance(value, list):
        return len(value) <= 1024 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, (str, int, float, bool))


def _snapshot() -> dict:
    state = st.session_state
    keys = [k for k in state if isinstance(k, str) and k.startswith("p.f.")] + [k for k in DATA_KEYS if k in state]
    return {k: state[k] for k in sorted(keys) if _plain(state[k])}


def _upload_ok(value) -> bool:
    """An uploaded file named by a draft is used only while it is still a file in the uploads folder."""
    try:
        p = Path(value).resolve()
        return p.is_relative_to(paths.UPLOADS_DIR.resolve()) and p.is_file()
    except (OSError, TypeError, ValueError):
        return False


def restore() -> None:
    """On a tab's first run: take the draft its URL names into the form (already filled with the defaults), or
    note why it could not; a tab without one gets a new id."""
    st.session_state[FRESH] = True
    asked = st.query_params.get(PARAM)
    if asked is None:
        st.session_state[ID] = secrets.token_hex(16)
        return
    if not ID_RE.fullmatch(asked):
        st.session_state[ID] = secrets.token_hex(16)
        st.session_state[NOTICE] = ("lost", "train.draft_missing")
        return
    st.session_state[ID] = asked
    f = _draft_file(asked)
    try:
        if f.stat().st_size > MAX_BYTES:
            raise ValueError("too large")
        values = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(values, dict):
            raise ValueError("not a mapping")
    except FileNotFoundError:
        st.session_state[NOTICE] = ("lost", "train.draft_missing")
        return
    except (OSError, ValueError, UnicodeDecodeError):
        st.session_state[NOTICE] = ("lost", "train.draft_unreadable")
        return
    for k, v in values.items():
        known = isinstance(k, str) and (k.startswith("p.f.") or k in DATA_KEYS)
        if known and _plain(v) and (k != "data.last_upload" or _upload_ok(v)):
            st.session_state[k] = v
    st.session_state[SAVED] = values
    st.session_state[NOTICE] = ("restored", "")


def save() -> None:
    """Keep the form's values as this tab's draft (when they changed), and the draft's id in the tab's URL."""
    draft_id = st.session_state.get(ID)
    if draft_id is None:
        return
    if st.query_params.get(PARAM) != draft_id:
        st.query_params[PARAM] = draft_id
    values = _snapshot()
    if values == st.session_state.get(SAVED):
        return
    body = json.dumps(values, ensure_ascii=False)
    if len(body.encode("utf-8")) > MAX_BYTES:
        return
    try:
        folder().mkdir(parents=True, exist_ok=True)
        target = _draft_file(draft_id)
        new = not target.exists()
        write_text_atomic(target, body)
        if new:
            _prune()
    except OSError:
        return  # a full or read-only disk: the form works on; only a restart would reset it
    st.session_state[SAVED] = values


def _prune() -> None:
    drafts = sorted(folder().glob("*.json"), key=lambda p: p.stat().st_mtime if p.exists() else 0.0)
    for old in drafts[:-MAX_DRAFTS]:
        old.unlink(missing_ok=True)


def notice() -> tuple[str, str] | None:
    """("restored", "") after a restart brought the draft back, ("lost", reason label) when it could not."""
    return st.session_state.get(NOTICE)


def first_run() -> bool:
    """True once, on the first run of a server session. A click arriving then was made on a page the previous
    server drew (the tab reconnected after a restart): the page acts on it only once the form was shown again."""
    return bool(st.session_state.pop(FRESH, False))


def clear_notice() -> None:
    st.session_state.pop(NOTICE, None)
