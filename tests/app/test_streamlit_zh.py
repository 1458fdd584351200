"""Streamlit's own frontend sentences in the Chinese UI (issue 18, item 4: uploader and connection dialog).

The browser half (the sentences really change in a Chinese tab, the connection dialog after the server stops) is
checked in tests/app/test_browser_e2e.py; here: the sentences we translate still exist in the installed Streamlit, and
the script is placed in Chinese tabs only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import streamlit
from playwright.sync_api import sync_playwright
from streamlit.testing.v1 import AppTest

from app import streamlit_zh
from browser import CHROMIUM, CHROMIUM_ARGS, streamlit_server
from trainer_core.common.paths import PROJECT_ROOT

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
BUNDLE = "\n".join(p.read_text(errors="replace")
                   for p in (Path(streamlit.__file__).parent / "static" / "static" / "js").glob("*.js"))


def _in_bundle(sentence: str) -> bool:
    """Whether Streamlit's bundle has `sentence` as a whole JS string literal."""
    return re.search(r"[`'\"]" + re.escape(sentence) + r"[`'\"]", BUNDLE) is not None


def test_every_translated_sentence_is_still_in_streamlits_bundle():
    missing = [s for s in streamlit_zh.EXACT if not _in_bundle(s)]
    assert not missing, f"Streamlit no longer writes these (update app/streamlit_zh.py): {missing}"
    missing = [s for s in streamlit_zh.TEMPLATES if s not in BUNDLE]
    assert not missing, f"Streamlit no longer builds these sentences (update app/streamlit_zh.py): {missing}"


def _rewrite(rules: list[tuple[str, str]], sentence: str) -> str:
    """What the page script does with one text node: the first matching pattern (JS `$1` is Python's `\\1`)."""
    for pattern, repl in rules:
        if re.search(pattern, sentence):
            return re.sub(pattern, re.sub(r"\$(\d)", r"\\\1", repl), sentence)
    return sentence


@pytest.mark.parametrize("english, chinese", [
    ("200MB per file", "单个文件不超过 200MB"),
    ("Number is above the allowed range. Please enter a value less than or equal to 8192.",
     "数值高于允许的范围：请输入不大于 8192 的值。"),
    ("Number is below the allowed range. Please enter a value greater than or equal to 1.",
     "数值低于允许的范围：请输入不小于 1 的值。"),
    ("Number is outside the allowed range. Please enter a value between 1 and 50.",
     "数值超出允许的范围：请输入 1 到 50 之间的值。"),
    ("Press Enter to apply", "按回车键应用"),
    ("Press Ctrl+Enter to apply", "按 Ctrl+回车键应用"),
])
def test_patterns_translate_streamlits_sentences_and_back(english, chinese):
    assert _rewrite(streamlit_zh.PATTERNS, english) == chinese
    assert _rewrite(streamlit_zh.BACK, chinese) == english


def test_number_range_and_empty_picker_sentences_are_translated():
    """Issue 31: a number input's range message and the compare picker's "No results" stayed English."""
    for english in ("No results", "Number is above the allowed range.", "Number is below the allowed range.",
                    "Choose an option"):
        assert english in streamlit_zh.EXACT
    assert len(set(streamlit_zh.EXACT.values())) == len(streamlit_zh.EXACT)  # the way back to English is unique


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
    with streamlit_server(tmp_path / "streamlit.log", app_file) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            plain = _uploader(browser, f"{url}/?lang=en", "Upload")
            translated = _uploader(browser, f"{url}/?lang=zh", "上传")
        finally:
            browser.close()
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


SWITCH_APP = """
import time

import streamlit as st

from app import streamlit_zh

lang = st.radio("lang", ["zh", "en"], horizontal=True)
streamlit_zh.install(lang)
time.sleep(1.5)  # what follows is drawn after the script's iframe has loaded, as on a real page
st.file_uploader("data " + lang, key="up-" + lang)
st.number_input("n", min_value=1, max_value=5, key="n")
st.multiselect("runs", ["run-a", "run-b"], key="runs")
"""


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH: apt-get install -y chromium")
def test_still_translating_after_switching_to_english_and_back(tmp_path):
    """Issue 31: a number input's range message (Streamlit's Markdown in an error tooltip) stayed English in the
    Chinese UI, as did the compare picker's "No results"; after 中文 → English → 中文 what is drawn later (the
    tooltip) was no longer translated at all: the page's observer had died with the iframe the switch reloaded."""
    from playwright.sync_api import expect

    app_file = tmp_path / "switch_app.py"
    app_file.write_text(SWITCH_APP)
    with streamlit_server(tmp_path / "streamlit.log", app_file) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                page.set_default_timeout(90_000)
                page.goto(url)
                dropzone = page.locator('[data-testid="stFileUploaderDropzone"]')
                expect(dropzone).to_contain_text("单个文件不超过", timeout=90_000)
                page.get_by_text("en", exact=True).click()
                expect(dropzone).to_contain_text("per file", timeout=90_000)
                page.get_by_text("zh", exact=True).click()
                expect(page.get_by_label("data zh")).to_be_attached(timeout=90_000)
                expect(dropzone.locator("button")).to_contain_text("上传", timeout=15_000)
                expect(dropzone).to_contain_text("单个文件不超过")
                number = page.get_by_label("n", exact=True)
                number.fill("9")
                number.press("Enter")
                page.get_by_test_id("stTooltipErrorHoverTarget").hover()  # the message shows on hover
                expect(page.get_by_test_id("stTooltipErrorContent")).to_contain_text("数值超出允许的范围：请输入 1 到 5 之间的值",
                                                                                     timeout=15_000)
                picker = page.get_by_test_id("stMultiSelect").locator("input")
                picker.click()
                picker.fill("zzz")  # the compare picker with nothing matching
                expect(page.get_by_text("没有匹配项", exact=True)).to_be_visible(timeout=15_000)
                picker.press("Escape")
                page.get_by_text("en", exact=True).click()
                expect(page.get_by_label("data en")).to_be_attached(timeout=90_000)
                number.fill("0")
                number.press("Enter")
                page.get_by_test_id("stTooltipErrorHoverTarget").hover()
                expect(page.get_by_test_id("stTooltipErrorContent")).to_contain_text("Number is outside", timeout=15_000)
            finally:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "streamlit-zh-switch.png"))
                browser.close()
