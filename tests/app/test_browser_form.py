# .venv/bin/python -m pytest tests/app/test_browser_form.py -q
"""The Train form in a real browser (issue 31): five invalid values are reported together, each under its own field,
and nothing starts; a device another run holds is shown before any click with Launch disabled, and once it is free
the page launches again.

Drives Chromium (found on PATH; Debian's package) through Playwright for Python against one dashboard served as
run_app.sh serves it, with a private runs folder, cache and device-lock folder. No test here starts a run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from browser import CHROMIUM, browser_page, settle, streamlit_server
from helpers import CPU_LOCK
from trainer_core.common.paths import PROJECT_ROOT

ARTIFACTS = PROJECT_ROOT / "test-artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH: apt-get install -y chromium"),
]

# field -> (its label on the page, its tab, the value typed): each out of its range, all on the quickstart form.
FIVE = {"train.learning_rate": ("学习率", "超参数", "5"), "train.epochs": ("训练轮数", "超参数", "-1"),
        "data.max_length": ("最大长度（token）", "模型与数据", "1"), "train.seed": ("随机种子", "超参数", "-3"),
        "train.micro_batch_size": ("每个 rank 的微批大小", "超参数", "0")}
LAUNCH = "开始训练"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """(URL, runs folder, lock folder) of one dashboard for the module; its runs, cache and device locks are its own,
    so a run elsewhere on this machine cannot make the page busy and the test's lock busies only this page."""
    tmp = tmp_path_factory.mktemp("browser-form")
    runs, locks = tmp / "runs", tmp / "locks"
    runs.mkdir()
    with streamlit_server(tmp / "streamlit.log", TRAINER_RUNS_ROOT=str(runs), TRAINER_LOCK_DIR=str(locks),
                          TRAINER_CACHE_DIR=str(tmp / "cache")) as url:
        yield url, runs, locks


def open_train_page(page, url: str, expect) -> None:
    page.goto(url)
    expect(page.get_by_role("heading", name="数据")).to_be_visible(timeout=90_000)
    page.locator('[data-testid="stSidebarNav"]').get_by_text("训练", exact=True).click()
    expect(page.get_by_role("heading", name="训练")).to_be_visible()
    expect(page.locator(".st-key-train-memory")).to_be_visible(timeout=120_000)  # the plan's checks are done
    settle(page)


def started(runs) -> list[str]:
    """Run folders and processes of runs under `runs` (a supervisor or rank names its run folder)."""
    folders = [p.name for p in runs.iterdir() if not p.name.startswith(".")]
    procs = [p.pid for p in psutil.process_iter(["cmdline"]) if str(runs) in " ".join(p.info["cmdline"] or [])]
    return folders + procs


def test_five_invalid_fields_are_reported_together_each_under_its_field_and_nothing_starts(dashboard):
    from playwright.sync_api import expect

    url, runs, _ = dashboard
    with browser_page(ARTIFACTS / "form-five-invalid-failure.png") as page:
        open_train_page(page, url, expect)
        for field, (label, tab, value) in FIVE.items():
            page.get_by_role("tab", name=tab).click()
            box = page.get_by_role("textbox" if field == "train.learning_rate" else "spinbutton", name=label)
            box.fill(value)
            box.press("Enter")
            settle(page)
        summary = page.locator('[data-testid="stAlert"]').filter(has_text="配置有误，无法启动")
        expect(summary).to_have_count(1)
        for field, (label, tab, _) in FIVE.items():
            expect(summary).to_contain_text(field)  # all five in the plan's one summary ...
            page.get_by_role("tab", name=tab).click()
            own = page.locator('[data-testid="stAlert"]').filter(has_text=field).filter(has_not_text="配置有误")
            expect(own).to_have_count(1)
            expect(own).to_be_visible()
            # ... and each right under its own field: below the box, in its column, before the next field.
            box = page.get_by_role("textbox" if field == "train.learning_rate" else "spinbutton", name=label)
            field_at, error_at = box.bounding_box(), own.bounding_box()
            assert 0 <= error_at["y"] - (field_at["y"] + field_at["height"]) < 60, (field, field_at, error_at)
            assert abs(error_at["x"] - field_at["x"]) < 40, (field, field_at, error_at)
        launch = page.get_by_role("button", name=LAUNCH)
        expect(launch).to_be_disabled()
        expect(page.get_by_text("配置有误，改正后才能开始")).to_be_visible()  # the reason, beside the button
        launch.click(force=True)  # a user clicking anyway: a disabled button does nothing
        settle(page)
        page.wait_for_timeout(2000)
        assert started(runs) == [], "a run started from an invalid form"


HOLD = """
import sys, time
from pathlib import Path
from trainer_core.runs import device_locks
fds = device_locks.acquire(Path(sys.argv[1]), [sys.argv[2]])
print("held", flush=True)
time.sleep(600)
"""


def test_a_busy_device_is_shown_before_the_click_and_launch_comes_back_once_it_is_free(dashboard, tmp_path):
    """Another process holds this machine's device lock as a run's supervisor does (taken through device_locks,
    freed by the kernel when the process ends): the page says so, naming the run, with Launch disabled, before any
    click. The holder ends; after a refresh, as a user would do, Launch is enabled and the notice gone."""
    from playwright.sync_api import expect

    url, runs, locks = dashboard
    other = tmp_path / "other-runs" / "other-run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(other), CPU_LOCK], cwd=PROJECT_ROOT,
                              env=dict(os.environ, TRAINER_LOCK_DIR=str(locks)),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with browser_page(ARTIFACTS / "form-busy-failure.png") as page:
            open_train_page(page, url, expect)
            launch = page.get_by_role("button", name=LAUNCH)
            busy = page.locator('[data-testid="stAlert"]').filter(has_text=f"{CPU_LOCK} 正被运行")
            expect(busy).to_be_visible()
            expect(busy).to_contain_text("other-run")
            expect(launch).to_be_disabled()
            expect(page.get_by_text("设备正忙，现在无法开始")).to_be_visible()  # the reason, beside the button
            assert "placement.gpus" not in busy.inner_text(), "GPU advice on a machine without a GPU"

            holder.terminate()
            holder.wait(timeout=30)
            page.reload()
            expect(page.get_by_role("heading", name="训练")).to_be_visible(timeout=90_000)
            expect(page.locator(".st-key-train-memory")).to_be_visible(timeout=120_000)
            settle(page)
            expect(page.get_by_role("button", name=LAUNCH)).to_be_enabled()
            expect(busy).to_have_count(0)
            expect(page.get_by_text("设备正忙，现在无法开始")).to_have_count(0)
    finally:
        if holder.poll() is None:
            holder.terminate()
            holder.wait(timeout=30)
    assert started(runs) == []
