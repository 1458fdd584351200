"""One server entry file, and one module that touches Streamlit's internals (app/pages_mode.py), for a reason Streamlit
still has.

    .venv/bin/python -m pytest tests/app/test_pages_mode.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = [*ROOT.glob("*.py"), *ROOT.glob("app/*.py"), *ROOT.glob("pages/*.py"), *ROOT.glob("trainer_core/**/*.py")]


def test_streamlit_still_runs_old_multipage_mode_next_to_a_pages_folder(monkeypatch):
    """Why app/pages_mode.py exists: a fresh Streamlit process whose entry script has `pages/` beside it starts in
    its old folder mode. When this fails, Streamlit decides it some other way: delete app/pages_mode.py and its
    callers instead of adapting the test."""
    from streamlit.runtime.pages_manager import PagesManager

    monkeypatch.setattr(PagesManager, "uses_pages_directory", None)  # a process that served nothing yet
    PagesManager(str(ROOT / "streamlit_app.py"))
    assert PagesManager.uses_pages_directory is True
    assert (ROOT / "pages").is_dir()  # the project keeps its pages/ folder, so the mode is on at every start


def test_the_mode_is_left_in_one_module(monkeypatch):
    from streamlit.runtime.pages_manager import PagesManager

    from app import pages_mode

    monkeypatch.setattr(PagesManager, "uses_pages_directory", True)
    assert pages_mode.leave_pages_directory_mode() is True and PagesManager.uses_pages_directory is False
    assert pages_mode.leave_pages_directory_mode() is False
    touching = sorted(str(p.relative_to(ROOT)) for p in PRODUCT
                      if "PagesManager" in p.read_text(encoding="utf-8") and p.name != "pages_mode.py")
    assert not touching, f"Streamlit's PagesManager is touched outside app/pages_mode.py: {touching}"


def test_one_server_entry_file():
    """streamlit_app.py is both the `st.App` that `streamlit run` serves and the page frame; nothing else at the
    project's top is a script of the server."""
    assert sorted(p.name for p in ROOT.glob("*.py")) == ["streamlit_app.py"]
    tree = ast.parse((ROOT / "streamlit_app.py").read_text(encoding="utf-8"))
    apps = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "st.App"]
    assert [ast.unparse(a.args[0]) for a in apps] == ["'streamlit_app.py'"]  # it serves itself
    navs = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "st.navigation"]
    assert len(navs) == 1
