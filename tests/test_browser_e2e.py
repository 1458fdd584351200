# .venv/bin/python -m pytest tests/test_browser_e2e.py -q -s
"""The dashboard in a real browser: start it as run_app.sh does, upload the sample, train, watch it live, chat.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright for Python. Screenshots of every page, in both
languages, go to test-artifacts/ (git-ignored). The training run is the quickstart config cut to one epoch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
SAMPLE = ROOT / "data" / "sample_zhenhuan.jsonl"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: apt-get install -y chromium"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"streamlit did not answer on {url} within {timeout}s")


class Server:
    """The dashboard as run_app.sh starts it (`python -m app.serve`, which runs `streamlit run streamlit_app.py`),
    on a free port, with a private runs folder."""

    def __init__(self, tmp_path: Path):
        self.runs = tmp_path / "runs"
        self.runs.mkdir()
        self.log_path = tmp_path / "streamlit.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, TRAINER_RUNS_ROOT=str(self.runs), PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.serve", "--server.port", str(self.port), "--server.headless", "true"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_healthy(self.url, self.proc)

    def stop(self) -> None:
        """End the dashboard (its own process group only: training runs live in their own sessions)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def server(tmp_path):
    """A running dashboard; afterwards it is stopped and any run it started is force-stopped."""
    srv = Server(tmp_path)
    try:
        srv.start()
        yield srv
    finally:
        from trainer_core.runs.registry import list_runs
        from trainer_core.runs.lifecycle import stop
        from trainer_core.runs.state import read_state

        srv.stop()
        for run in list_runs(srv.runs):
            if read_state(run).alive:
                stop(run, force=True)
        print(srv.log_path.read_text(errors="replace")[-3000:])


def shot(page, name: str, height: int = 2600) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its own container, so grow the viewport instead."""
    ARTIFACTS.mkdir(exist_ok=True)
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": height})
    time.sleep(0.8)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size(size)


IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def settle(page, timeout: float = 60_000) -> None:
    """Wait until the script run has finished (not for pages that refresh themselves every second)."""
    page.wait_for_timeout(300)
    page.wait_for_selector(IDLE, state="attached", timeout=timeout)


def nav(page, label: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(label, exact=True).click()


def step_text(page) -> str:
    return page.locator(".st-key-mon-progress [data-testid='stProgress']").inner_text()


def test_upload_train_watch_chat(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)
        try:
            walk_through(page, server, expect)
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "failure.png"))
            raise
        finally:
            browser.close()


def walk_through(page, server: Server, expect) -> None:
    url, runs = server.url, server.runs

    # ---- Data: upload the sample; it is validated and stored under data/uploads with a safe name
    page.goto(url)
    expect(page.get_by_role("heading", name="数据")).to_be_visible(timeout=90_000)
    page.get_by_text("上传文件", exact=True).click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(SAMPLE))
    expect(page.get_by_text("已保存为")).to_be_visible()
    stored = page.get_by_text("已保存为").inner_text().split()[-1]
    assert stored.startswith("data/uploads/sample_zhenhuan-") and stored.endswith(".jsonl"), stored
    expect(page.locator('[data-testid="stMetricValue"]').first).to_have_text("140")
    expect(page.locator(".mask-view")).to_be_visible()
    settle(page)
    shot(page, "1-data-zh")

    # ---- Train: the uploaded file is in the form; one epoch; the plan fits; launch
    page.get_by_role("button", name="用这个数据训练").click()
    expect(page.get_by_role("heading", name="训练")).to_be_visible()
    expect(page.get_by_role("textbox", name="数据集文件")).to_have_value(stored)
    page.get_by_role("tab", name="超参数").click()
    epochs = page.get_by_role("spinbutton", name="训练轮数")
    epochs.fill("1")
    epochs.press("Enter")
    settle(page)
    expect(page.get_by_text("内存够用。")).to_be_visible()
    expect(page.locator('[data-testid="stCode"]').first).to_contain_text("deepspeed.launcher.runner")
    shot(page, "2-train-zh")
    page.get_by_role("button", name="开始训练").click()

    # ---- Monitor: the step counter and the loss chart move without any reload
    expect(page.get_by_role("heading", name="监控")).to_be_visible(timeout=90_000)
    page.evaluate("window.__noReload = true")
    progress = page.locator(".st-key-mon-progress [data-testid='stProgress']")
    expect(progress).to_contain_text("步数", timeout=60_000)
    chart = page.locator(".st-key-mon-loss-chart [data-testid='stVegaLiteChart']")
    expect(chart).to_be_visible(timeout=180_000)
    first_step, first_chart = step_text(page), chart.screenshot()
    deadline = time.time() + 180
    while step_text(page) == first_step and time.time() < deadline:
        time.sleep(0.5)
    assert step_text(page) != first_step, f"the step counter stayed at {first_step!r}"
    page.wait_for_timeout(1500)
    assert chart.screenshot() != first_chart, "the loss chart did not change while the run trained"
    assert page.evaluate("window.__noReload") is True, "the page was reloaded"
    shot(page, "3-monitor-running-zh")

    # ---- Restart the dashboard mid-run: the tab reconnects by itself and re-attaches to the run from disk
    server.stop()
    before = step_text(page)
    server.start()
    deadline = time.time() + 180
    while step_text(page) == before and time.time() < deadline:
        time.sleep(0.5)
    assert step_text(page) != before, "the tab did not pick the run up again after the dashboard restart"
    # It is the whole app that came back, not the bare page script: our navigation and the language switch.
    expect(page.locator('[data-testid="stSidebarNav"] a')).to_have_count(5)
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("English", exact=True)).to_be_visible()
    assert page.evaluate("window.__noReload") is True, "the page was reloaded"
    expect(page.get_by_text("训练完成，最终模型已保存。")).to_be_visible(timeout=400_000)
    settle(page)
    shot(page, "4-monitor-done-zh")
    (run,) = [r for r in runs.iterdir() if not r.name.startswith(".")]
    assert (run / "final" / "COMPLETE").is_file()

    # ---- Chat: the finished run is preselected. Compare mode puts the untrained base model beside it; the base
    # model babbles up to max new tokens, long enough to watch its reply arrive piece by piece.
    nav(page, "对话")
    box = page.get_by_placeholder("对甄嬛说点什么……")
    expect(box).to_be_visible()
    settle(page)
    page.get_by_text("生成参数", exact=True).click()
    max_new = page.locator('[data-testid="stSlider"]').filter(has_text="最多生成 token 数").get_by_role("slider")
    max_new.focus()
    max_new.press("Home")
    for _ in range(15):  # 16 + 15 x 16 = 256 new tokens
        max_new.press("ArrowRight")
    settle(page)
    page.get_by_text("对比模式：同一句话同时问基座模型", exact=True).click()
    settle(page)
    box.fill("你是谁？")
    box.press("Enter")
    assistant = page.locator('[data-testid="stChatMessage"]').filter(
        has=page.locator('[data-testid="stChatMessageAvatarAssistant"]'))
    # Replies are plain text (st.text), not Markdown.
    expect(assistant.first.locator('[data-testid="stText"]')).to_be_visible(timeout=120_000)
    reply = assistant.nth(1).locator('[data-testid="stText"]')  # the base model's, second
    lengths = []
    deadline = time.time() + 300
    page.wait_for_timeout(300)
    while time.time() < deadline and (not page.locator(IDLE).count() or not reply.count()):
        if reply.count():
            n = len(reply.inner_text().strip())
            if not lengths or lengths[-1] != n:
                lengths.append(n)
        time.sleep(0.05)
    settle(page)
    final = reply.inner_text().strip()
    assert final, "no reply text"
    assert assistant.first.inner_text().strip(), "the fine-tuned model gave no reply"
    partial = [n for n in lengths if 0 < n < len(final)]
    assert partial, f"the reply appeared all at once (lengths seen: {lengths}, final {len(final)})"
    page.evaluate("document.querySelectorAll('*').forEach(e => { if (e.scrollTop > 0) e.scrollTop = 0; })")
    shot(page, "5-chat-zh")
    nav(page, "历史运行")
    expect(page.get_by_role("heading", name="历史运行")).to_be_visible()
    settle(page)
    page.get_by_text("导出检查点为 safetensors 模型", exact=True).click()
    page.get_by_role("button", name="导出", exact=True).click()
    expect(page.get_by_text("已导出到")).to_be_visible(timeout=120_000)
    assert list(run.glob("exports/checkpoint-*/model*.safetensors")), "export wrote no weights"
    settle(page)
    shot(page, "6-runs-zh")

    # ---- English: the same pages render with English labels
    page.locator('[data-testid="stSidebar"]').get_by_text("English", exact=True).click()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    settle(page)
    shot(page, "6-runs-en")
    for label, heading, name in (("Data", "Data", "1-data-en"), ("Train", "Train", "2-train-en"),
                                 ("Monitor", "Monitor", "4-monitor-done-en"), ("Chat", "Chat", "5-chat-en")):
        nav(page, label)
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        settle(page)
        shot(page, name)
