"""The one place that touches Streamlit's internals: switching a server out of its old folder-based multipage mode.

Streamlit 1.67 (`streamlit/runtime/pages_manager.py`) decides per process, from whether a `pages/` folder sits next
to the entry script, that requests run in its old multipage mode (`PagesManager.uses_pages_directory`), and leaves
that mode only once some request has run `st.navigation`. Until then the first request shows Streamlit's raw page
list ("streamlit app / chat / data ...") and a tab reconnecting to /monitor gets the page without our frame. There is
no option for it: the supported ways out are renaming `pages/` (the project's layout names it) or moving the entry
script away from it (every `st.switch_page("pages/...")` and test path would become "../pages/..."). So the flag is
set here, and only here; tests/test_pages_mode.py fails once Streamlit stops deciding this from the folder, and then
this module can go.
"""

from __future__ import annotations


def leave_pages_directory_mode() -> bool:
    """Switch this Streamlit process out of its old multipage mode; True if it was in it.

    Called before the server starts (app.serve), by a page that found itself run bare (app.frame.require_frame), and
    by tests and benchmarks that want a server that has served its first page.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        return True
    return False


def turn_off_before_start() -> None:
    """Before the server exists, decide the mode ourselves so the first request already runs `st.navigation`."""
    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False
