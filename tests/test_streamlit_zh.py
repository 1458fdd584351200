"""Streamlit's own frontend sentences in the Chinese UI (issue 18, item 4: uploader and connection dialog).

The browser half (the sentences really change in a Chinese tab, the connection dialog after the server stops) is
checked in tests/test_browser_e2e.py; here: the sentences we translate still exist in the installed Streamlit, and
the script is placed in Chinese tabs only.
"""

from __future__ import annotations

import re
from pathlib import Path

import streamlit
from streamlit.testing.v1 import AppTest

from app import streamlit_zh

BUNDLE = "\n".join(p.read_text(errors="replace")
                   for p in (Path(streamlit.__file__).parent / "static" / "static" / "js").glob("*.js"))


def _in_bundle(sentence: str) -> bool:
    """Whether Streamlit's bundle has `sentence` as a whole JS string literal."""
    return re.search(r"[`'\"]" + re.escape(sentence) + r"[`'\"]", BUNDLE) is not None


def test_every_translated_sentence_is_still_in_streamlits_bundle():
    missing = [s for s in streamlit_zh.EXACT if not _in_bundle(s)]
    assert not missing, f"Streamlit no longer writes these (update app/streamlit_zh.py): {missing}"
    assert "per file`" in BUNDLE


def test_size_pattern_matches_the_uploader_line_and_back():
    (pattern, repl), = streamlit_zh.PATTERNS
    zh = re.sub(pattern, repl.replace("$1", r"\1"), "200MB per file")
    assert zh == "单个文件不超过 200MB"
    (back, back_repl), = streamlit_zh.BACK
    assert re.sub(back, back_repl.replace("$1", r"\1"), zh) == "200MB per file"


def _iframes(lang_first: str, lang_then: str | None = None) -> list[int]:
    def page():
        import streamlit as st

        from app import streamlit_zh as z

        z.install(st.session_state.get("lang", "zh"))

    at = AppTest.from_function(page)
    at.session_state["lang"] = lang_first
    at.run()
    counts = [len(at.get("iframe"))]
    if lang_then:
        at.session_state["lang"] = lang_then
        at.run()
        counts.append(len(at.get("iframe")))
    return counts


def test_placed_in_chinese_tabs_and_after_a_switch_to_english_only():
    assert _iframes("en") == [0]
    assert _iframes("zh", "en") == [1, 1]  # English again: the script runs once more to restore Streamlit's words
    assert "单个文件不超过" in streamlit_zh.script("zh") and '"en"' in streamlit_zh.script("en")
