"""Access control for the dashboard. On 127.0.0.1 nobody else can reach it and no password is needed; bound to any
other address it serves nothing until a password (env STUDIO_PASSWORD or `password` in Streamlit secrets) is set,
and every page asks for it once per browser session."""

from __future__ import annotations

import hmac
import ipaddress
import os

PASSWORD_ENV = "STUDIO_PASSWORD"


def is_loopback(address: str) -> bool:
    if address in ("localhost", ""):
        return address == "localhost"
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def configured_password(secrets=None) -> str | None:
    value = os.environ.get(PASSWORD_ENV)
    if not value and secrets is not None:
        try:
            value = secrets.get("password")
        except Exception:  # no secrets.toml at all: Streamlit raises instead of returning None
            value = None
    return value or None


def password_ok(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
