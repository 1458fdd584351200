"""Access control for the dashboard. On 127.0.0.1 nobody else can reach it and no password is needed; bound to any
other address it serves nothing until a password (env STUDIO_PASSWORD or `password` in Streamlit secrets) is set,
and every page asks for it once per browser session, slowing down repeated wrong guesses."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

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


# Wrong passwords slow the next try down: 1 s after the first failure, doubling each time, at most 5 minutes.
# Per browser session, and globally, because a script can open a new session for every guess: past GLOBAL_FREE
# failures within GLOBAL_WINDOW_S, every session waits out the global delay too.
BASE_DELAY_S = 1.0
MAX_DELAY_S = 300.0
GLOBAL_FREE = 10
GLOBAL_WINDOW_S = 900.0

log = logging.getLogger("studio.auth")


def delay_after(failures: int) -> float:
    """Seconds to wait after the n-th consecutive failure (0 for none)."""
    if failures <= 0:
        return 0.0
    return min(MAX_DELAY_S, BASE_DELAY_S * 2 ** min(failures - 1, 30))


@dataclass
class SessionAttempts:
    """One browser session's record; kept in its st.session_state."""

    failures: int = 0
    next_try_at: float = 0.0


class Throttle:
    """Failed sign-ins of the whole server process (every session), and when each may try again."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._failures: deque[float] = deque()
        self._global_next_try_at = 0.0

    def wait_s(self, session: SessionAttempts) -> float:
        """Seconds before this session may try a password; 0 when it may now."""
        with self._lock:
            return max(0.0, max(session.next_try_at, self._global_next_try_at) - self.clock())

    def failed(self, session: SessionAttempts, client: str = "?") -> float:
        """Record a wrong password; returns the wait before the next try and logs one line."""
        now = self.clock()
        with self._lock:
            self._failures.append(now)
            while self._failures and self._failures[0] < now - GLOBAL_WINDOW_S:
                self._failures.popleft()
            recent = len(self._failures)
            session.failures += 1
            session.next_try_at = now + delay_after(session.failures)
            self._global_next_try_at = now + delay_after(recent - GLOBAL_FREE)
            wait = max(session.next_try_at, self._global_next_try_at) - now
        log.warning("wrong dashboard password from %s: failure %d of this session, %d in the last %d min; "
                    "next try in %.0f s", client, session.failures, recent, GLOBAL_WINDOW_S // 60, wait)
        return wait

    def succeeded(self, session: SessionAttempts) -> None:
        session.failures = 0
        session.next_try_at = 0.0


THROTTLE = Throttle()
