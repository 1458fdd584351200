"""The dashboard's download route: a run's model folder streamed to the browser as a zip, never held in memory.

Streamlit's own download button keeps whatever it hands out in the server's memory while the tab lives, which
rules out multi-GB weights. So the server (`serve_app.py`, an `st.App`) mounts one extra HTTP route next to
Streamlit's, `<base>/studio-download/<token>/<name>.zip`, whose response is `trainer_core.models.archive.zip_chunks`
sent as it is produced (chunked transfer, 1 MiB blocks).

Who may download: a page run mints a token for one model folder (`grant`) only after the visitor got past the
dashboard's password gate, and the token is the whole permission: 256 random bits, bound to that folder, valid for
`GRANT_TTL_S`. The route runs in the same process as the page scripts, so the grants are a dict in memory: a
restarted server forgets them and the page mints new ones on its next run.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from trainer_core.runs import protocol

PREFIX = "studio-download"
GRANT_TTL_S = 3600.0
"""How long a minted link can start a download (a download in progress is not cut off)."""
MAX_GRANTS = 10_000
"""Live grants kept at most; the oldest go first (each page run of each tab mints at most one per model folder)."""


@dataclass(frozen=True)
class Grant:
    folder: Path
    """The complete model folder this token may download."""
    top: str
    """The archive's top folder and file name (`<run>-<folder>`)."""
    expires: float
    """time.time() after which the token is refused."""


_grants: dict[str, Grant] = {}
_lock = threading.Lock()
_mounted = False
_base = ""


def _base_path() -> str:
    from streamlit import config

    base = (config.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}" if base else ""


def routes() -> list:
    """The route for `st.App(routes=...)`; calling it also tells the pages that links will work."""
    from starlette.routing import Route

    global _mounted, _base
    _base = _base_path()
    _mounted = True
    return [Route(f"{_base}/{PREFIX}/{{token}}/{{name}}", download, methods=["GET"])]


def mounted() -> bool:
    """True in a server started by app.serve; False under plain `streamlit run streamlit_app.py` or AppTest."""
    return _mounted


def grant(folder: Path, top: str, now: float | None = None) -> tuple[str, float]:
    """A fresh download link for one model folder and when it stops working."""
    now = time.time() if now is None else now
    token = secrets.token_urlsafe(32)
    g = Grant(Path(folder).resolve(), top, now + GRANT_TTL_S)
    with _lock:
        for old in [k for k, v in _grants.items() if v.expires <= now]:
            del _grants[old]
        while len(_grants) >= MAX_GRANTS:
            del _grants[next(iter(_grants))]
        _grants[token] = g
    return f"{_base}/{PREFIX}/{token}/{quote(top)}.zip", g.expires


def lookup(token: str, now: float | None = None) -> Grant | None:
    now = time.time() if now is None else now
    with _lock:
        g = _grants.get(token)
    return g if g is not None and g.expires > now else None


def _refusal(status: int, message: str):
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(message + "\n", status_code=status, headers={"Cache-Control": "no-store"})


async def download(request):
    from starlette.responses import StreamingResponse

    from trainer_core.models.archive import zip_chunks

    g = lookup(request.path_params["token"])
    if g is None:
        return _refusal(404, "This download link is unknown or has expired: open the Runs page again for a new one. "
                             "/ 下载链接无效或已过期：请重新打开历史运行页面。")
    if not (g.folder / protocol.COMPLETE_MARKER).is_file():
        return _refusal(410, f"{g.top} is no longer a complete model folder on the server (deleted or being "
                             f"rewritten). / {g.top} 已不是完整的模型文件夹（已删除或正在重写）。")
    name = f"{g.top}.zip"
    headers = {
        "Content-Disposition": f"attachment; filename=\"{name}\"; filename*=UTF-8''{quote(name)}",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    # A plain generator: Starlette pulls each block on a worker thread, so file reads never block the event loop.
    return StreamingResponse(zip_chunks(g.folder, g.top), media_type="application/zip", headers=headers)
