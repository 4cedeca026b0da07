"""A sliding-window rate limiter for login attempts, per client address.

Account lockout (in :mod:`medsearch.accounts`) stops guessing one account's
password; this limiter stops one client from spraying many accounts.  It is
in-process: ``medsearch serve`` runs one process with threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from flask import Flask, current_app

from medsearch.errors import MedsearchError

_KEY = "medsearch.ratelimit"


class RateLimitError(MedsearchError):
    http_status = 429
    code = "rate_limited"

    def __init__(self, retry_after: int):
        self.retry_after = retry_after
        super().__init__("Too many login attempts from this address.",
                         f"Wait {retry_after} seconds and try again.")


class RateLimiter:
    def __init__(self, per_minute: int, window: float = 60.0):
        self.per_window = per_minute
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> None:
        """Count one attempt; raise RateLimitError when over the limit."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._hits.setdefault(key, deque())
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) >= self.per_window:
                raise RateLimitError(max(1, int(q[0] + self.window - now) + 1))
            q.append(now)
            if len(self._hits) > 100_000:  # bound memory under an address-spraying attack
                self._hits = {k: v for k, v in self._hits.items() if v and v[-1] > now - self.window}


def init_app(app: Flask) -> None:
    app.extensions[_KEY] = None


def get_limiter() -> RateLimiter:
    limiter = current_app.extensions.get(_KEY)
    if limiter is None:
        from medsearch.web.instance import get_instance

        limiter = RateLimiter(get_instance().settings.login_rate_per_minute)
        current_app.extensions[_KEY] = limiter
    return limiter
