"""Start the dashboard, refusing to listen beyond this machine without a password.

    python -m app.serve [streamlit flags]       (what run_app.sh runs)

Streamlit's own `server.address` (last flag, environment, .streamlit/config.toml) decides where it listens; this
wrapper asks Streamlit's parser for that same value and stops with exit code 2 if it is not a loopback address and
no password is set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from app.auth import PASSWORD_ENV, configured_password, is_loopback
from trainer_core.common.paths import PROJECT_ROOT


def effective_address(argv: list[str]) -> str:
    """The address Streamlit will bind for these flags, worked out by Streamlit's own code: its click parser (the
    last of repeated flags wins, STREAMLIT_SERVER_ADDRESS fills an absent flag) and its config loader (flags over
    ./.streamlit/config.toml over ~/.streamlit/config.toml). Reading the flags ourselves got the first of two
    `--server.address` flags while Streamlit bound the last. Call from the project folder, as Streamlit runs."""
    from streamlit import config
    from streamlit.web import bootstrap
    from streamlit.web import cli as stcli

    ctx = stcli.main_run.make_context("run", ["streamlit_app.py", *argv])
    flags = {k: v for k, v in ctx.params.items() if k not in ("target", "args")}
    bootstrap.load_config_options(flags)
    return config.get_option("server.address") or ""


def secrets_password() -> str | None:
    import tomllib

    for path in (PROJECT_ROOT / ".streamlit" / "secrets.toml", Path.home() / ".streamlit" / "secrets.toml"):
        if path.is_file():
            value = tomllib.loads(path.read_text(encoding="utf-8")).get("password")
            if value:
                return str(value)
    return None


def main(argv: list[str]) -> int:
    import click

    os.chdir(PROJECT_ROOT)
    try:
        address = effective_address(argv)
    except click.ClickException as e:  # a flag Streamlit does not know: say so the way it would, in one line
        print(f"error: {e.format_message()}", file=sys.stderr)
        return 2
    if not is_loopback(address) and not (configured_password() or secrets_password()):
        print(f"error: refusing to serve on {address or 'all interfaces'} without a password: set {PASSWORD_ENV} "
              "or `password` in .streamlit/secrets.toml, or keep --server.address 127.0.0.1", file=sys.stderr)
        return 2
    from app import warmup

    warmup.start()  # the libraries load while Streamlit starts, so the first page rarely waits
    from streamlit.web import cli as stcli

    from app import pages_mode

    pages_mode.turn_off_before_start()  # pages/ holds st.navigation's scripts, not a folder menu (pages_mode: why)
    sys.argv = ["streamlit", "run", "streamlit_app.py", *argv]  # the pages plus the download route
    return stcli.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
