"""Streamlit's own frontend sentences in the Chinese UI (issue 18, item 4: uploader and connection dialog).

The browser half (the sentences really change in a Chinese tab, the connection dialog after the server stops) is
checked in tests/app/test_browser_e2e.py; here: the sentences we translate still exist in the installed Streamlit, and
the script is placed in Chinese tabs only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import streamlit
from playwright.sync_api import sync_playwright
from streamlit.testing.v1 import AppTest

from app import streamlit_zh
from helpers import free_port
from browser import CHROMIUM, CHROMIUM_ARGS, wait_healthy
from trainer_core.common.paths import PROJECT_ROOT

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


PROBE_APP = """
import streamlit as st

from app import streamlit_zh

if st.query_params.get("lang") == "zh":
    streamlit_zh.install("zh")
st.file_uploader("data")
"""


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH: apt-get install -y chromium")
def test_the_script_takes_no_room_on_the_page_and_still_translates(tmp_path):
    """In real Chromium: the page's first widget sits exactly where it sits without the script (the 1-pixel iframe
    and the column's gap above it used to push it 17 px down), and the uploader still says 上传."""
    app_file = tmp_path / "probe_app.py"  # not app.py: that name would shadow the project's app package
    app_file.write_text(PROBE_APP)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    with open(tmp_path / "streamlit.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(app_file), "--server.port", str(port),
                                 "--server.headless", "true"], cwd=PROJECT_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                plain = _uploader(browser, f"{url}/?lang=en", "Upload")
                translated = _uploader(browser, f"{url}/?lang=zh", "上传")
            finally:
                browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert translated == plain, (translated, plain)


def _uploader(browser, url: str, button: str) -> dict:
    """The uploader's box once its button reads `button` (the script, where placed, has run by then)."""
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    try:
        page.goto(url)
        page.locator('[data-testid="stFileUploaderDropzone"] button', has_text=button).wait_for(timeout=90_000)
        return page.locator('[data-testid="stFileUploader"]').bounding_box()
    finally:
        page.close()
