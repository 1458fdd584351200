"""Debian's Chromium for the browser tests: a dashboard (or probe page) served by Streamlit, waiting for it to
answer and for a script run to end, and one browser page with the tests' timeouts and a screenshot on failure."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from helpers import free_port
from trainer_core.common.paths import PROJECT_ROOT

CHROMIUM = shutil.which("chromium")


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


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


@contextmanager
def streamlit_server(log: Path, script: Path | None = None, **env: str) -> Iterator[str]:
    """A Streamlit server on a free port; yields its URL once it answers and ends it (its own process group: runs
    live in sessions of their own) after the block. Without `script`, the dashboard as run_app.sh starts it
    (`python -m app.serve`); with one, `streamlit run script` (a probe page that imports the project's packages).
    `env`: variables set for it (a private runs folder, a private device-lock folder)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = ["-m", "app.serve"] if script is None else ["-m", "streamlit", "run", str(script)]
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, *serve, "--server.port", str(port), "--server.headless", "true"],
                                cwd=PROJECT_ROOT, env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), **env),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def settle(page, timeout: float = 60_000) -> None:
    """Wait until the script run has finished (not for pages that refresh themselves every second)."""
    page.wait_for_timeout(300)
    page.wait_for_selector(IDLE, state="attached", timeout=timeout)


@contextmanager
def browser_page(failure_shot: Path, *, init_script: str | None = None, timeout_ms: float = 60_000,
                 **context_options) -> Iterator:
    """One page of a fresh Chromium (1400 x 1000 unless `viewport` is given), Playwright's and `expect`'s timeouts
    set to `timeout_ms`; when the block fails, the page as it was is saved to `failure_shot`. The browser is
    closed after the block."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(**{"viewport": {"width": 1400, "height": 1000}, **context_options})
        if init_script is not None:
            context.add_init_script(init_script)
        page = context.new_page()
        page.set_default_timeout(timeout_ms)
        expect.set_options(timeout=timeout_ms)
        try:
            yield page
        except BaseException:
            failure_shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(failure_shot))
            raise
        finally:
            browser.close()
