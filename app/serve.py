"""Start the dashboard, refusing to listen beyond this machine without a password.

    python -m app.serve [streamlit flags]       (what run_app.sh runs)

Streamlit's own `server.address` (flag, environment or .streamlit/config.toml) decides where it listens; this
wrapper reads the same value and stops with exit code 2 if it is not a loopback address and no password is set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from app.auth import PASSWORD_ENV, configured_password, is_loopback

ROOT = Path(__file__).resolve().parent.parent


def requested_address(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--server.address="):
            return arg.split("=", 1)[1]
        if arg == "--server.address" and i + 1 < len(argv):
            return argv[i + 1]
    if os.environ.get("STREAMLIT_SERVER_ADDRESS"):
        return os.environ["STREAMLIT_SERVER_ADDRESS"]
    import tomllib

    config = ROOT / ".streamlit" / "config.toml"
    return tomllib.loads(config.read_text(encoding="utf-8")).get("server", {}).get("address", "") if config.exists() else ""


def secrets_password() -> str | None:
    import tomllib

    for path in (ROOT / ".streamlit" / "secrets.toml", Path.home() / ".streamlit" / "secrets.toml"):
        if path.is_file():
            value = tomllib.loads(path.read_text(encoding="utf-8")).get("password")
            if value:
                return str(value)
    return None


def main(argv: list[str]) -> int:
    address = requested_address(argv)
    if not is_loopback(address) and not (configured_password() or secrets_password()):
        print(f"error: refusing to serve on {address or 'all interfaces'} without a password: set {PASSWORD_ENV} "
              "or `password` in .streamlit/secrets.toml, or keep --server.address 127.0.0.1", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    from app import warmup

    warmup.start()  # the libraries load while Streamlit starts, so the first page rarely waits
    from streamlit.web import cli as stcli

    sys.argv = ["streamlit", "run", "streamlit_app.py", *argv]
    return stcli.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
