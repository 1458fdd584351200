# .venv/bin/python -m pytest tests/app/test_browser_zh_pass.py -q -s
"""Issue 31, Done-when: a screenshot pass of every page in Chinese shows no English outside data and model text.

The dashboard starts as run_app.sh starts it, over a runs folder holding a completed run (with a final model) and a
stopped one (tests/pages_helpers.make_run). Each page is opened in Chinese, its visible text (main area and
sidebar) collected, and every English word outside the allowlist below reported; screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from browser import CHROMIUM, CHROMIUM_ARGS, wait_healthy
from helpers import free_port
from pages_helpers import make_run
from trainer_core.common.paths import PROJECT_ROOT

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
PAGES = [("数据", "zh-pass-1-data"), ("训练", "zh-pass-2-train"), ("监控", "zh-pass-3-monitor"),
         ("对话", "zh-pass-4-chat"), ("历史运行", "zh-pass-5-runs")]

# English that belongs in the Chinese UI: product, model and format names, units, the language switch.
ALLOWED = {
    "english", "qwen", "instruct", "deepspeed", "zero", "lora", "json", "jsonl", "csv", "parquet", "safetensors",
    "gguf", "token", "tokens", "gib", "mib", "gb", "mb", "kb", "cpu", "gpu", "gpus", "ram", "cuda", "nvml", "adam",
    "adamw", "bf16", "fp16", "fp32", "eta", "ema", "chatml", "alpaca", "sharegpt", "yaml", "zip", "streamlit",
    "huggingface", "hugging", "face", "offload", "nvme", "ckpt", "eos", "bos", "top", "temperature", "system", "user",
    "assistant", "sample", "zhenhuan", "tiny", "starter", "quickstart", "checkpoint", "final", "run", "yml", "rank",
    "packing", "logits", "epoch", "markdown", "slurm", "qlora", "dora", "rslora", "peft", "nf4", "bitsandbytes",
}
# Data and model text the page shows as it is: run names, paths, file names, numbers with units, key=value.
IDENTIFIER = re.compile(r"\S*[._/\\=:\d\-]\S*")
WORD = re.compile(r"[A-Za-z]{2,}")
# Regions holding the user's data or a model's words (records, chat replies, log lines, code).
USER_TEXT = ('[data-testid="stCode"], pre, textarea, input, [data-testid="stDataFrame"], '
             '[data-testid="stChatMessage"], .mask-view, .log-tail, code, [data-testid="stText"]')

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH: apt-get install -y chromium"),
]


def english_words(text: str) -> list[str]:
    """English words in `text` outside identifiers, paths, numbers and the allowlist."""
    return [w for w in WORD.findall(IDENTIFIER.sub(" ", text)) if w.lower() not in ALLOWED]


def test_english_words_are_found_and_identifiers_and_model_names_are_not():
    assert english_words("步数 3 / 10 · 已完成 Qwen2.5-0.5B-Instruct data/uploads/a.jsonl 2.0 GiB") == []
    assert english_words("No results") == ["No", "results"]
    assert english_words("字段 turn 2") == ["turn"]


DRAWN = """() => !document.querySelector('[data-testid="stSkeleton"]')
  && [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].every(e => e.querySelector("canvas, svg"))
  && [...document.querySelectorAll('[data-testid="stDataFrame"]')].every(e => e.querySelector("canvas"))"""

VISIBLE_TEXT = """(sel) => {
  const skip = new Set(document.querySelectorAll(sel));
  const out = [];
  const root = document.querySelector('[data-testid="stApp"]');
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || !n.nodeValue.trim()) continue;
    if ([...skip].some(s => s.contains(el))) continue;
    if (el.closest('[aria-hidden="true"], [data-testid="stIconMaterial"], style, script, title')) continue;
    const r = el.getBoundingClientRect(), cs = getComputedStyle(el);
    if (r.width === 0 || r.height === 0 || cs.visibility === "hidden" || cs.display === "none") continue;
    out.push(n.nodeValue.trim());
  }
  return out;
}"""


def test_every_page_in_chinese_shows_no_english(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    runs = tmp_path / "runs"
    runs.mkdir()
    make_run(runs, "done-run", "completed", final=True)
    make_run(runs, "stopped-run", "stopped", steps=4)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, TRAINER_RUNS_ROOT=str(runs), PYTHONUNBUFFERED="1")
    with open(tmp_path / "streamlit.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app.serve", "--server.port", str(port),
                                 "--server.headless", "true"], cwd=PROJECT_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    found: dict[str, list[str]] = {}
    try:
        wait_healthy(url, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 2600})
            page.set_default_timeout(90_000)
            try:
                page.goto(url)
                expect(page.get_by_role("heading", name="数据")).to_be_visible(timeout=90_000)
                for label, shot in PAGES:
                    page.locator('[data-testid="stSidebarNav"]').get_by_text(label, exact=True).click()
                    expect(page.get_by_role("heading", name=label)).to_be_visible()
                    page.wait_for_timeout(500)
                    page.wait_for_selector(IDLE, state="attached", timeout=90_000)
                    page.wait_for_function(DRAWN, timeout=60_000)  # tables and charts load after the script run
                    page.wait_for_timeout(1500)  # and the translating script has had its turn
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / f"{shot}.png"))
                    lines = [s for s in page.evaluate(VISIBLE_TEXT, USER_TEXT) if english_words(s)]
                    if lines:
                        found[label] = lines
            finally:
                browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert not found, f"English in the Chinese UI (screenshots in test-artifacts/zh-pass-*.png): {found}"
