"""Sliding-window counters kept in memory: failed logins per client address and per user name, and the
refused requests of a user that are written as events. Per process: two servers each keep their own, which
at worst doubles a limit; the lock-out counter on the user row is the limit shared by every server."""

from __future__ import annotations

import threading
import time
from collections import deque


class Window:
    """At most `limit` hits per `seconds` for each key."""

    def __init__(self, limit: int, seconds: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.seconds = seconds
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._prune(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.seconds:
            hits.popleft()
        return hits

    def _prune(self, now: float) -> None:
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self.seconds]:
            del self._hits[key]
        if len(self._hits) >= self.max_keys:  # still full of live keys: forget the oldest half
            for key in list(self._hits)[: self.max_keys // 2]:
                del self._hits[key]

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may be hit again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            hits = self._live(key, now)
            return 0.0 if len(hits) < self.limit else hits[0] + self.seconds - now

    def hit(self, key: str) -> int:
        """Counts a hit; returns how many hits the window now holds."""
        now = time.monotonic()
        with self._lock:
            hits = self._live(key, now)
            hits.append(now)
            return len(hits)

    def clear(self, key: str) -> None:
        with self._lock:
            self._hits.pop(key, None)
