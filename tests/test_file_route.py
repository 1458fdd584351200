"""The dashboard's download route over real HTTP: a model folder streamed as a zip, and who is refused.

    .venv/bin/python -m pytest tests/test_file_route.py

A real uvicorn server in a thread serves app.file_route's route (the same `Route` serve_app.py gives `st.App`);
the client is urllib. The browser path through the Runs page is tests/test_browser_e2e.py's.
"""

from __future__ import annotations

import io
import os
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
import zipfile

import pytest

from app import file_route
from helpers import free_port
from test_app_pages import make_run
from trainer_core.runs import protocol

pytestmark = pytest.mark.slow


@pytest.fixture
def server(monkeypatch):
    import uvicorn
    from starlette.applications import Starlette

    monkeypatch.setattr(file_route, "_grants", {})
    monkeypatch.setattr(file_route, "_mounted", False)  # routes() sets it; restored afterwards
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(Starlette(routes=file_route.routes()), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def fetch(url: str):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_a_granted_folder_downloads_as_a_zip_streamed_in_blocks(server, runs_root, tmp_path):
    """64 MiB of weights go out while the server's Python heap stays under 8 MiB (every thread traced), in chunked
    transfer; the archive holds every file byte for byte."""
    run = make_run(runs_root, "done", "completed", final=True)
    big = tmp_path / "model-00002-of-00002.safetensors"
    big.write_bytes(os.urandom(1024) * (64 * 1024))
    (run / protocol.FINAL / big.name).symlink_to(big)
    url, expires = file_route.grant(run / protocol.FINAL, "done-final")
    assert expires > time.time() + file_route.GRANT_TTL_S - 5 and url.endswith("/done-final.zip")
    tracemalloc.start()
    try:
        with urllib.request.urlopen(server + url, timeout=60) as r, open(tmp_path / "got.zip", "wb") as out:
            headers = r.headers
            while block := r.read(256 * 1024):
                out.write(block)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"serving held {peak / 2**20:.1f} MiB"
    assert headers["content-type"] == "application/zip" and headers.get("transfer-encoding") == "chunked"
    assert 'filename="done-final.zip"' in headers["content-disposition"]
    assert headers["cache-control"] == "no-store"
    with zipfile.ZipFile(io.BytesIO((tmp_path / "got.zip").read_bytes())) as zf:
        assert zf.testzip() is None
        assert zf.read(f"done-final/{big.name}") == big.read_bytes()
        on_disk = sorted(p.name for p in (run / protocol.FINAL).iterdir() if p.name != protocol.COMPLETE_MARKER)
        assert sorted(n.split("/", 1)[1] for n in zf.namelist()) == on_disk


def test_unknown_expired_and_incomplete_are_refused(server, runs_root):
    run = make_run(runs_root, "done", "completed", final=True)
    url, _ = file_route.grant(run / protocol.FINAL, "done-final")
    token = url.split("/")[-2]
    status, _, body = fetch(server + url.replace(token, "x" * len(token)))
    assert status == 404 and "expired" in body.decode()
    old, _ = file_route.grant(run / protocol.FINAL, "done-final", now=time.time() - file_route.GRANT_TTL_S - 1)
    assert fetch(server + old)[0] == 404, "a link past its lifetime no longer works"
    (run / protocol.FINAL / protocol.COMPLETE_MARKER).unlink()  # deleted or being rewritten since the link was minted
    status, _, body = fetch(server + url)
    assert status == 410 and "done-final" in body.decode()
    assert fetch(server + f"/{file_route.PREFIX}/{token}")[0] == 404, "the route needs the file name too"


def test_grants_are_bounded_and_expired_ones_pruned(monkeypatch, tmp_path):
    monkeypatch.setattr(file_route, "_grants", {})
    monkeypatch.setattr(file_route, "MAX_GRANTS", 3)
    now = time.time()
    stale, _ = file_route.grant(tmp_path, "a", now=now - 2 * file_route.GRANT_TTL_S)
    first = [file_route.grant(tmp_path, f"b{i}", now=now)[0] for i in range(3)]
    assert stale.split("/")[-2] not in file_route._grants, "an expired grant is dropped on the next grant"
    file_route.grant(tmp_path, "c", now=now)
    assert len(file_route._grants) == 3 and file_route.lookup(first[0].split("/")[-2]) is None, "oldest first"
    assert file_route.lookup(first[1].split("/")[-2]) is not None
