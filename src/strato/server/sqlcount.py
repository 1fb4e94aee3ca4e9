"""Counts the SQL statements of each API request, for the query-count tests only.

Off unless the server is started with STRATO_TEST_COUNT_SQL=1 in its environment (the tests set it):
then each API response carries the number of statements its request ran in the X-Strato-SQL-Statements
header. Nothing else changes, and a production server never sets the variable."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, event

ENV = "STRATO_TEST_COUNT_SQL"
HEADER = "X-Strato-SQL-Statements"

R = TypeVar("R")

_local = threading.local()


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


def install(engine: Engine) -> None:
    """Counts every statement the engine runs in the thread that runs it (a request runs in one thread)."""

    def count(*_args: Any) -> None:
        if getattr(_local, "counting", False):
            _local.count += 1

    event.listen(engine, "before_cursor_execute", count)


def counted(fn: Callable[[], R]) -> tuple[R, int]:
    """Runs fn in this thread and returns its result with the number of statements it ran."""
    _local.counting, _local.count = True, 0
    try:
        return fn(), _local.count
    finally:
        _local.counting = False
