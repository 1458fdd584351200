# .venv/bin/python -m pytest tests/app/test_browser_e2e.py -q -s
"""The dashboard in a real browser: start it as run_app.sh does, then, as a new user would: a broken data file and a
linted config (their messages in Chinese), upload the sample, keep the first 50 records, train, watch it live
across a dashboard restart, stop, resume from an older checkpoint, download the export as a zip, chat and stop a
reply.

Drives Chromium (found on PATH; Debian's package) through Playwright for Python. Screenshots of every page, in both
languages, go to test-artifacts/ (git-ignored). One server start for everything: the suite is near its time limit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import CHROMIUM, CHROMIUM_ARGS, browser_page, wait_healthy
from helpers import free_port
from nav_recorder import NAV_RECORDER
from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.runs import protocol

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
SAMPLE = PROJECT_ROOT / "data" / "sample_zhenhuan.jsonl"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH: apt-get install -y chromium"),
]


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
                cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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


CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")
IDENTIFIER = re.compile(r"\S*[._/\\=:\d]\S*")  # field names, paths, numbers, key=value: kept as they are in Chinese


def english_sentences(texts: list[str]) -> list[str]:
    """Sentences with no Chinese in them: three or more plain words once identifiers and paths are taken out."""
    found = []
    for text in texts:
        for part in re.split(r"[\n。；！？]", text):
            words = re.findall(r"[A-Za-z]{2,}", IDENTIFIER.sub(" ", part))
            if len(words) >= 3 and not CJK.search(part):
                found.append(part.strip())
    return found


def alert_texts(page) -> list[str]:
    return page.locator('[data-testid="stAlert"]').all_inner_texts()


def test_english_sentences_are_found_and_identifiers_are_not():
    assert english_sentences(["deepspeed.offload_param 需要 deepspeed.stage 3。", "data/uploads/a-1.jsonl",
                              "train.learning_rate must be > 0 (got -1)"]) == ["train.learning_rate must be > 0 (got -1)"]


def test_upload_train_watch_chat(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        context.add_init_script(NAV_RECORDER)
        page = context.new_page()
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
    tmp = server.runs.parent
    page.goto(server.url)
    expect(page.get_by_role("heading", name="数据")).to_be_visible(timeout=90_000)
    settle(page)
    # The first page a freshly started server serves shows our menu from the first paint, never Streamlit's list.
    assert not [n for n in page.evaluate("window.__navSeen") if "streamlit app" in n.lower()]
    broken_data_in_chinese(page, tmp, expect)
    linted_config_in_chinese(page, tmp, expect)
    stored = upload_and_keep_50(page, expect)
    launch(page, stored, expect)
    run = watch_and_restart(page, server, expect)
    older = stop_then_resume_from_older(page, run, expect)
    expect(page.get_by_text("训练完成，最终模型已保存。")).to_be_visible(timeout=600_000)
    settle(page)
    shot(page, "4-monitor-done-zh")
    assert (run / "final" / "COMPLETE").is_file()
    assert f"resuming from {run / protocol.CHECKPOINTS / f'checkpoint-{older}'}" in (run / protocol.LOG).read_text()
    steps = [r["step"] for r in map(json.loads, (run / protocol.METRICS).read_text().splitlines()) if r.get("loss")]
    assert steps.count(older + 1) == 1, f"the abandoned steps after {older} are still in the metrics: {steps}"
    download_export(page, run, tmp, expect)
    chat_and_stop(page, expect)
    english_pages(page, expect)


def upload(page, path: Path) -> None:
    page.get_by_text("上传文件", exact=True).click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))


def broken_data_in_chinese(page, tmp: Path, expect) -> None:
    """A file no record of which is usable, then one with bad rows: every message shown is Chinese."""
    truncated = tmp / "truncated.json"
    truncated.write_text('[{"instruction": "你是谁？", "output": "臣妾', encoding="utf-8")
    # Streamlit's own uploader sentence (shown while no file is chosen), translated by app/streamlit_zh.py
    page.get_by_text("上传文件", exact=True).click()
    expect(page.locator('[data-testid="stFileUploaderDropzone"]')).to_contain_text("单个文件不超过")
    upload(page, truncated)
    expect(page.locator('[data-testid="stAlert"]').first).to_be_visible()
    settle(page)
    seen = alert_texts(page)
    bad_rows = tmp / "bad_rows.jsonl"
    bad_rows.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (
        {"instruction": "你是谁？", "output": "臣妾甄嬛。"}, {"instruction": "今日可好？"},
        {"instruction": "皇上呢？", "output": 3}, {"instruction": ["列表"], "output": "答"})) + "\n", encoding="utf-8")
    upload(page, bad_rows)
    expect(page.get_by_text("行有问题")).to_be_visible()
    settle(page)
    shot(page, "0-data-broken-zh")
    seen += alert_texts(page)
    assert len(seen) >= 2, seen
    assert english_sentences(seen) == [], seen


def linted_config_in_chinese(page, tmp: Path, expect) -> None:
    """A saved config loaded into the Train form (ZeRO-2 on one rank without offload, which the linter flags): the
    lint, planner notes and every other message are Chinese. Then back to the quickstart."""
    from trainer_core.config.run_config import load_config

    linted = tmp / "linted.yaml"
    linted.write_text(load_config(PROJECT_ROOT / "configs" / "quickstart.yaml", ["deepspeed.offload_optimizer=none"]).to_yaml(),
                      encoding="utf-8")
    nav(page, "训练")
    expect(page.get_by_role("heading", name="训练")).to_be_visible()
    page.get_by_text("载入保存的 config.yaml", exact=True).click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(linted))
    expect(page.get_by_text("已载入 linted.yaml")).to_be_visible()
    expect(page.locator(".st-key-train-memory")).to_be_visible(timeout=120_000)  # the checks are done
    settle(page)
    shot(page, "2a-train-linted-zh")
    seen = alert_texts(page)
    assert len(seen) >= 2, seen  # the loaded-file note and the lint at least
    assert english_sentences(seen) == [], seen
    page.get_by_role("button", name="恢复为快速上手配置").click()
    settle(page)


def upload_and_keep_50(page, expect) -> str:
    """Upload the sample (stored under data/uploads with a safe name), then keep its first 50 records as a new file,
    which becomes the selected one. Returns that file as the page shows it."""
    nav(page, "数据")
    expect(page.get_by_role("heading", name="数据")).to_be_visible()
    upload(page, SAMPLE)
    # Until the rerun ends, the broken file's elements can still stand beside the new ones (Streamlit drops stale
    # elements only when the script finishes), so match the new file's line alone, then let the run end before
    # looking at anything the two files both have.
    saved = page.get_by_text(re.compile(r"已保存为 data/uploads/sample_zhenhuan-"))
    expect(saved).to_be_visible()
    settle(page)
    stored = saved.inner_text().split()[-1]
    assert stored.startswith("data/uploads/sample_zhenhuan-") and stored.endswith(".jsonl"), stored
    expect(page.locator('[data-testid="stMetricValue"]').first).to_have_text("140")
    expect(page.locator(".mask-view")).to_have_count(1)
    expect(page.locator(".mask-view")).to_be_visible()
    shot(page, "1-data-zh")
    page.get_by_text("精简数据：取前 N 条、随机 N 条、去除完全重复", exact=True).click()
    n = page.get_by_role("spinbutton", name="条数 N")  # typed: the box kept the broken file's 1 usable record
    n.fill("50")
    n.press("Enter")
    settle(page)
    done = page.get_by_text("已生成并选中")
    for _ in range(3):  # a click landing while the box's own rerun ends can be dropped; making the file is idempotent
        page.get_by_role("button", name="生成新的数据文件").click()
        try:
            expect(done).to_be_visible(timeout=20_000)
            break
        except AssertionError:
            settle(page)
    expect(done).to_be_visible()
    subset = re.search(r"data/uploads/\S+?\.jsonl", done.inner_text()).group(0)
    assert subset != stored
    expect(page.locator('[data-testid="stMetricValue"]').first).to_have_text("50")
    settle(page)
    return subset


def launch(page, data_path: str, expect) -> None:
    """Train on the 50 records (making the file put it in the form: no second click): enough epochs for a few
    checkpoints (every 2 steps); the plan fits; launch."""
    expect(page.get_by_text("训练页正在使用这个文件")).to_be_visible()
    nav(page, "训练")
    expect(page.get_by_role("heading", name="训练")).to_be_visible()
    expect(page.get_by_role("textbox", name="数据集文件")).to_have_value(data_path)
    page.get_by_role("tab", name="超参数").click()
    for label, value in (("训练轮数", "8"), ("保存间隔（步）", "2")):
        box = page.get_by_role("spinbutton", name=label)
        box.fill(value)
        box.press("Enter")
        settle(page)
    expect(page.get_by_text("内存够用。")).to_be_visible(timeout=120_000)
    expect(page.locator('[data-testid="stCode"]').first).to_contain_text("deepspeed.launcher.runner")
    shot(page, "2-train-zh")
    page.get_by_role("button", name="开始训练").click()


def shown_step(page) -> int:
    m = re.search(r"(\d+)\s*/", step_text(page))
    return int(m.group(1)) if m else 0


def watch_and_restart(page, server: Server, expect) -> Path:
    """The step counter and the loss chart move without any reload, also across a dashboard restart."""
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
    # Restart the dashboard mid-run: the tab reconnects by itself and re-attaches to the run from disk.
    server.stop()
    before = step_text(page)
    expect(page.get_by_text("连接中断")).to_be_visible(timeout=60_000)  # Streamlit's dialog, in Chinese
    server.start()
    deadline = time.time() + 180
    while step_text(page) == before and time.time() < deadline:
        time.sleep(0.5)
    assert step_text(page) != before, "the tab did not pick the run up again after the dashboard restart"
    # It is the whole app that came back, not the bare page script: our navigation and the language switch.
    expect(page.locator('[data-testid="stSidebarNav"] a')).to_have_count(5)
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("English", exact=True)).to_be_visible()
    assert page.evaluate("window.__noReload") is True, "the page was reloaded"
    (run,) = [r for r in server.runs.iterdir() if not r.name.startswith(".")]
    return run


def stop_then_resume_from_older(page, run: Path, expect) -> int:
    """Stop once two checkpoints exist (Stop saves one more), then resume from the older of the two kept."""
    deadline = time.time() + 300
    while len(protocol.complete_checkpoints(run)) < 1 and time.time() < deadline:
        time.sleep(0.5)
    page.get_by_role("button", name="停止（先保存）").click()
    expect(page.get_by_text("已停止。完整检查点")).to_be_visible(timeout=300_000)
    settle(page)
    steps = [protocol.checkpoint_step(c) for c in protocol.complete_checkpoints(run)]
    assert len(steps) >= 2, f"stop left {steps}"
    older = steps[-2]
    page.locator(f".st-key-mon-resume_step-{run.name}").click()
    page.get_by_role("option", name=f"第 {older} 步", exact=True).click()
    expect(page.get_by_text(f"从第 {older} 步继续会删除之后的检查点")).to_be_visible()
    settle(page)
    shot(page, "3a-monitor-stopped-zh")
    page.get_by_role("button", name="继续训练").click()
    return older


def download_export(page, run: Path, tmp: Path, expect) -> None:
    """Export the newest checkpoint on the Runs page, download it as a zip and look inside."""
    import zipfile

    nav(page, "历史运行")
    expect(page.get_by_role("heading", name="历史运行")).to_be_visible()
    settle(page)
    page.get_by_text("导出检查点为 safetensors 模型", exact=True).click()
    page.get_by_role("button", name="导出", exact=True).click()
    expect(page.get_by_text("已导出到")).to_be_visible(timeout=120_000)
    settle(page)
    (export,) = [p for p in (run / "exports").iterdir() if p.is_dir() and not p.name.startswith(".")]
    # A link to the server's download route: the zip is streamed as it is made, nothing held in memory or on disk.
    link = page.get_by_role("link", name=re.compile(rf"下载 {re.escape(run.name)}-{export.name}\.zip"))
    assert "/studio-download/" in link.get_attribute("href")
    with page.expect_download(timeout=120_000) as download:
        link.click()
    saved = tmp / "export.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as zf:
        assert zf.testzip() is None
        names = {n.split("/", 1)[1] for n in zf.namelist()}
        assert all(n.startswith(f"{run.name}-{export.name}/") for n in zf.namelist())
    on_disk = {p.name for p in export.iterdir() if p.name != protocol.COMPLETE_MARKER}
    assert names == on_disk, (names, on_disk)
    assert {"model.safetensors", "config.json", "tokenizer.json", "persona.json"} <= names, names
    assert not [p for p in (run / "exports").iterdir() if p.suffix == ".zip"], "no archive copy is left on disk"
    settle(page)
    shot(page, "6-runs-zh")


def chat_and_stop(page, expect) -> None:
    """The finished run is preselected. Compare mode puts the untrained base model beside it; the base model babbles
    up to max new tokens: its reply arrives piece by piece and the stop button ends it, keeping what was said."""
    nav(page, "对话")
    box = page.get_by_placeholder("对甄嬛说点什么……")
    expect(box).to_be_visible()
    settle(page)
    page.get_by_text("生成参数", exact=True).click()
    max_new = page.locator('[data-testid="stSlider"]').filter(has_text="最多生成 token 数").get_by_role("slider")
    max_new.focus()
    max_new.press("End")
    settle(page)
    page.get_by_text("对比模式：同一句话同时问另一个模型", exact=True).click()
    settle(page)
    box.fill("你是谁？")
    box.press("Enter")
    assistant = page.locator('[data-testid="stChatMessage"]').filter(
        has=page.locator('[data-testid="stChatMessageAvatarAssistant"]'))
    # Replies are plain text (st.text), not Markdown.
    expect(assistant.first.locator('[data-testid="stText"]')).to_be_visible(timeout=120_000)
    reply = assistant.nth(1).locator('[data-testid="stText"]')  # the base model's, second
    lengths: list[int] = []
    deadline = time.time() + 300
    while time.time() < deadline and len([n for n in lengths if n > 0]) < 3:
        if reply.count():
            n = len(reply.inner_text().strip())
            if not lengths or lengths[-1] != n:
                lengths.append(n)
        time.sleep(0.05)
    assert len([n for n in lengths if n > 0]) >= 3, f"the reply did not arrive piece by piece: {lengths}"
    page.get_by_role("button", name="停止生成").click()
    expect(page.get_by_text("已停止生成，保留了已生成的部分")).to_be_visible(timeout=60_000)
    settle(page)
    final = reply.inner_text().strip()
    assert final and len(final) >= lengths[-1], (final, lengths)
    assert assistant.first.inner_text().strip(), "the fine-tuned model gave no reply"
    page.evaluate("document.querySelectorAll('*').forEach(e => { if (e.scrollTop > 0) e.scrollTop = 0; })")
    shot(page, "5-chat-zh")


def english_pages(page, expect) -> None:
    """The same pages render with English labels."""
    nav(page, "历史运行")
    expect(page.get_by_role("heading", name="历史运行")).to_be_visible()
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


def test_a_restart_mid_edit_keeps_the_tabs_data_and_persona(server):
    """Issue 31: the tab reconnects by itself after a server restart, in a new session; the Train form comes back
    from the tab's draft (its id in the URL) instead of the quickstart's data and persona."""
    from playwright.sync_api import expect

    with browser_page(ARTIFACTS / "restart-draft-failure.png") as page:
        page.goto(server.url)
        expect(page.get_by_role("heading", name="数据")).to_be_visible(timeout=90_000)
        nav(page, "训练")
        expect(page.get_by_role("heading", name="训练")).to_be_visible()
        settle(page)
        page.evaluate("window.__noReload = true")
        persona = page.get_by_role("textbox", name="人设（系统提示词）")
        persona.fill("你是华妃，说话带刺")
        persona.press("Control+Enter")  # Streamlit takes a text area's value on Ctrl+Enter or blur
        settle(page)
        expect(page.get_by_text("你是华妃，说话带刺").last).to_be_visible()  # beside the launch button
        assert "draft=" in page.url
        server.stop()
        expect(page.get_by_text("连接中断")).to_be_visible(timeout=60_000)
        server.start()
        expect(page.get_by_text("连接中断")).to_be_hidden(timeout=120_000)
        # The next rerun (here Streamlit's "r" shortcut) runs in a new server session: the form is the tab's
        # draft and the page says it was restored.
        page.get_by_role("heading", name="训练").click()
        page.keyboard.press("r")
        expect(page.get_by_text("服务重启后已恢复这个标签页的表单草稿。")).to_be_visible(timeout=120_000)
        expect(page.get_by_role("textbox", name="人设（系统提示词）")).to_have_value("你是华妃，说话带刺")
        expect(page.get_by_role("textbox", name="数据集文件")).to_have_value("data/sample_zhenhuan.jsonl")
        assert page.evaluate("window.__noReload") is True, "the page was reloaded, not reconnected"
