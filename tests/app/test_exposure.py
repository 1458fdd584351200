# .venv/bin/python -m pytest tests/app/test_exposure.py -q
"""Exposure: loopback by default, a password beyond it on every page, XSRF and upload limits, one run per device
even when two launches race."""

import os
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import psutil
import pytest
from streamlit.testing.v1 import AppTest

from app.i18n import ZH
from helpers import free_port, warm_pages_manager
from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.config.run_config import load_config

PAGES = ["pages/data.py", "pages/train.py", "pages/monitor.py", "pages/chat.py", "pages/runs.py"]


def test_streamlit_config_defaults_are_safe():
    server = tomllib.loads((PROJECT_ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True
    assert 0 < server["maxUploadSize"] <= 200
    client = tomllib.loads((PROJECT_ROOT / ".streamlit" / "config.toml").read_text())["client"]
    assert client["showErrorDetails"] in ("type", "none"), "no tracebacks in the page"


@pytest.mark.parametrize("flags", [
    ["--server.address", "0.0.0.0"], ["--server.address", "::"], ["--server.address", "192.168.1.20"],
    ["--server.address", ""], ["--server.address=0.0.0.0"],
    # Streamlit binds the last of repeated flags; the check once read the first.
    ["--server.address", "127.0.0.1", "--server.address", "0.0.0.0"],
    ["--server.address=127.0.0.1", "--server.address=0.0.0.0"],
])
def test_serving_beyond_loopback_without_a_password_is_refused(flags, monkeypatch):
    monkeypatch.delenv("STUDIO_PASSWORD", raising=False)
    proc = subprocess.run([sys.executable, "-m", "app.serve", *flags, "--server.port", "8597"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refusing to serve" in proc.stderr and "STUDIO_PASSWORD" in proc.stderr
    assert "127.0.0.1 without" not in proc.stderr


def test_the_address_from_the_environment_is_checked_too(monkeypatch):
    monkeypatch.delenv("STUDIO_PASSWORD", raising=False)
    monkeypatch.setenv("STREAMLIT_SERVER_ADDRESS", "0.0.0.0")
    proc = subprocess.run([sys.executable, "-m", "app.serve", "--server.port", "8597"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "refusing to serve on 0.0.0.0 without a password" in proc.stderr


def test_effective_address_is_what_streamlit_resolves(monkeypatch):
    """Flags over the environment over .streamlit/config.toml, the last of repeated flags winning."""
    from app.serve import effective_address

    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.delenv("STREAMLIT_SERVER_ADDRESS", raising=False)
    assert effective_address([]) == "127.0.0.1"  # the project's config.toml
    assert effective_address(["--server.address", "0.0.0.0", "--server.address", "::1"]) == "::1"
    monkeypatch.setenv("STREAMLIT_SERVER_ADDRESS", "10.0.0.5")
    assert effective_address([]) == "10.0.0.5"
    assert effective_address(["--server.address", "127.0.0.1"]) == "127.0.0.1"


def test_password_guesses_wait_longer_each_time(monkeypatch, caplog, runs_root, starter_model):
    """Wrong passwords in one session: 1 s, then 2 s, then 4 s before the next is even compared; past the global
    allowance a fresh session (a script opening one per guess) waits as well. Each failure logs one line."""
    import streamlit as st

    from app import auth

    get_option = st.get_option
    monkeypatch.setattr(st, "get_option", lambda name: "0.0.0.0" if name == "server.address" else get_option(name))
    monkeypatch.setenv("STUDIO_PASSWORD", "s3cret")
    now = [5000.0]
    monkeypatch.setattr(auth, "THROTTLE", auth.Throttle(clock=lambda: now[0]))
    caplog.set_level("WARNING", logger="studio.auth")

    def errors(at):
        return [e.value for e in at.error]

    at = AppTest.from_file(str(PROJECT_ROOT / "streamlit_app.py"), default_timeout=120).run()
    waits = []
    for guess in ("guess1", "guess2", "guess3"):
        at.text_input(key="auth.password").set_value(guess).run()
        (msg,) = errors(at)
        assert msg.startswith("密码不对。"), msg
        waits.append(int(msg.split("请 ")[1].split(" 秒")[0]))
        at.text_input(key="auth.password").set_value("s3cret").run()  # during the wait: refused unheard
        assert errors(at) == [ZH["auth.wait"].format(s=waits[-1])] and not at.sidebar.radio
        now[0] += waits[-1]
        at.text_input(key="auth.password").set_value("").run()
    assert waits == [1, 2, 4]
    assert len([r for r in caplog.records if "wrong dashboard password" in r.getMessage()]) == 3

    # Fresh sessions share the global count: after GLOBAL_FREE failures in all, a new session must wait too.
    for i in range(auth.GLOBAL_FREE - 3 + 1):
        other = AppTest.from_file(str(PROJECT_ROOT / "streamlit_app.py"), default_timeout=120).run()
        other.text_input(key="auth.password").set_value(f"spray{i}").run()
    fresh = AppTest.from_file(str(PROJECT_ROOT / "streamlit_app.py"), default_timeout=120).run()
    fresh.text_input(key="auth.password").set_value("s3cret").run()
    assert errors(fresh) == [ZH["auth.wait"].format(s=1)] and not fresh.sidebar.radio
    now[0] += 1
    fresh.text_input(key="auth.password").set_value("").run()
    fresh.text_input(key="auth.password").set_value("s3cret").run()
    assert not fresh.exception and fresh.sidebar.radio(key="lang")
    assert len([r for r in caplog.records if "wrong dashboard password" in r.getMessage()]) == auth.GLOBAL_FREE + 1


def test_delay_doubles_and_is_capped():
    from app.auth import MAX_DELAY_S, delay_after

    assert [delay_after(n) for n in range(5)] == [0, 1, 2, 4, 8]
    assert delay_after(40) == MAX_DELAY_S


@pytest.mark.slow
def test_default_server_listens_on_loopback_only(runs_root):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.serve", "--server.port", str(port)], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        listening = []
        while time.time() < deadline and not listening:
            listening = [c.laddr for c in psutil.net_connections("inet")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
            time.sleep(0.3)
        assert listening, "the dashboard did not start"
        assert {a.ip for a in listening} == {"127.0.0.1"}
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


@pytest.fixture
def exposed(monkeypatch, runs_root, starter_model):
    """The dashboard as if bound to 0.0.0.0, with a password set."""
    import streamlit as st
    get_option = st.get_option
    monkeypatch.setattr(st, "get_option", lambda name: "0.0.0.0" if name == "server.address" else get_option(name))
    monkeypatch.setenv("STUDIO_PASSWORD", "s3cret")
    warm_pages_manager(monkeypatch)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_is_behind_the_password(exposed, page):
    at = AppTest.from_file(str(PROJECT_ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page(page).run()
    assert not at.exception
    assert [ti.label for ti in at.text_input] == [ZH["auth.password"]], "only the password box is shown"
    assert [x.value for x in at.title] == [ZH["app.title"]] and not at.sidebar.radio and not at.button
    at.text_input(key="auth.password").set_value("s3cret").run()
    assert not at.exception and at.sidebar.radio(key="lang"), "the page renders once the password is given"
    assert at.title[0].value != ZH["app.title"]


@pytest.mark.slow
def test_two_launches_at_once_start_exactly_one_run(runs_root, starter_model):
    """Two tabs pressing Launch at the same moment: the dashboard's launch path, from two threads."""
    from trainer_core.common.errors import UserError
    from trainer_core.runs.lifecycle import stop
    from trainer_core.runs.orchestrate import launch

    cfg = load_config(PROJECT_ROOT / "configs" / "quickstart.yaml", ["train.max_steps=50"])
    results: list = []
    barrier = threading.Barrier(2)

    def press():
        barrier.wait()
        try:
            results.append(launch(cfg))
        except UserError as e:
            results.append(e)

    threads = [threading.Thread(target=press) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    runs = [r for r in results if isinstance(r, Path)]
    refused = [r for r in results if isinstance(r, UserError)]
    try:
        assert len(runs) == 1 and len(refused) == 1, results
        assert "in use by run" in str(refused[0])
        assert [p.name for p in runs_root.iterdir() if not p.name.startswith(".")] == [runs[0].name]
    finally:
        for r in runs:
            stop(r, force=True)
