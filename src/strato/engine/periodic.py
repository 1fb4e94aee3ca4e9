"""Periodic housekeeping (expired jobs, destroyed VMs past their recovery window).

Areas register tasks; one thread per server runs them. With several servers only the leader (the
smallest id among servers with a fresh heartbeat) runs them, so that they never race each other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from strato.db.base import as_utc, utcnow
from strato.db.engine import Database
from strato.db.models import ServerNode

log = logging.getLogger("strato.periodic")


Interval = float | Callable[[Database], float]
"""Seconds between two runs: fixed, or read (from a setting) before each run is considered."""


@dataclass(frozen=True)
class PeriodicTask:
    name: str
    every_s: Interval
    run: Callable[[Database], None]

    def interval(self, db: Database) -> float:
        return self.every_s(db) if callable(self.every_s) else self.every_s


TASKS: list[PeriodicTask] = []


def periodic(name: str, every_s: Interval) -> Callable[[Callable[[Database], None]], Callable[[Database], None]]:
    def register(fn: Callable[[Database], None]) -> Callable[[Database], None]:
        TASKS.append(PeriodicTask(name, every_s, fn))
        return fn

    return register


def is_leader(db: Database, server_id: str, dead_after: float) -> bool:
    limit = utcnow() - timedelta(seconds=dead_after)
    with db.session() as s:
        live = {n.id for n in s.scalars(select(ServerNode)) if as_utc(n.heartbeat) >= limit}
    return min(live | {server_id}) == server_id


class PeriodicRunner:
    def __init__(self, db: Database, server_id: str, dead_after: float, tick_s: float = 1.0) -> None:
        self.db = db
        self.server_id = server_id
        self.dead_after = dead_after
        self.tick_s = tick_s
        self._last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="periodic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.run_due()
            except Exception:
                log.exception("periodic tasks failed")

    def run_due(self) -> None:
        if not is_leader(self.db, self.server_id, self.dead_after):
            return
        now = time.monotonic()
        for task in TASKS:
            if now - self._last.get(task.name, float("-inf")) < task.interval(self.db):
                continue
            self._last[task.name] = now
            try:
                task.run(self.db)
            except Exception:
                log.exception("periodic task %s failed", task.name)
