# .venv/bin/python -m pytest tests/test_exposure.py -q
"""Exposure: loopback by default, a password beyond it on every page, XSRF and upload limits, one run per device
even when two launches race."""

import os
import socket
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
from conftest import ROOT
from trainer_core.config import load_config

PAGES = ["pages/data.py", "pages/train.py", "pages/monitor.py", "pages/chat.py", "pages/runs.py"]


def test_streamlit_config_defaults_are_safe():
    server = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True
    assert 0 < server["maxUploadSize"] <= 200
    client = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["client"]
    assert client["showErrorDetails"] in ("type", "none"), "no tracebacks in the page"


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.168.1.20", ""])
def test_serving_beyond_loopback_without_a_password_is_refused(address, monkeypatch):
    monkeypatch.delenv("STUDIO_PASSWORD", raising=False)
    proc = subprocess.run([sys.executable, "-m", "app.serve", "--server.address", address, "--server.port", "8597"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "refusing to serve" in proc.stderr and "STUDIO_PASSWORD" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_default_server_listens_on_loopback_only(runs_root):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.serve", "--server.port", str(port)], cwd=ROOT,
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
    from streamlit.runtime.pages_manager import PagesManager

    get_option = st.get_option
    monkeypatch.setattr(st, "get_option", lambda name: "0.0.0.0" if name == "server.address" else get_option(name))
    monkeypatch.setenv("STUDIO_PASSWORD", "s3cret")
    init = PagesManager.__init__

    def warm_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", warm_init)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_is_behind_the_password(exposed, page):
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
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
    from app import train_form
    from trainer_core.errors import UserError
    from trainer_core.supervisor import stop

    cfg = load_config(ROOT / "configs" / "quickstart.yaml", ["train.max_steps=50"])
    results: list = []
    barrier = threading.Barrier(2)

    def press():
        barrier.wait()
        try:
            results.append(train_form.launch(cfg))
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
