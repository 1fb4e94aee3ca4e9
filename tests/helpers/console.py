"""Reading a guest's serial console while it is still being written: whole lines only.

QEMU appends to the console file (or the agent's log) a few bytes at a time, so a read can end in the
middle of a line. A pattern anchored with `$` (or a marker found by substring) would then match a line
that is not complete yet, e.g. `STRATO-INTEGRITY-GENS 1:3 2:` - so the unfinished tail is held back
until its newline arrives (or the writer has exited and nothing more will come).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def whole_lines(text: str, *, final: bool = False) -> str:
    """`text` up to and including its last newline; all of it when `final` (the writer has exited)."""
    if final:
        return text
    return text[: text.rfind("\n") + 1]


SLOW_FACTOR = 4  # a starved guest may take this many times a wait's timeout (wall clock)


def cpu_seconds(pid: int | None) -> float:
    """CPU time a process (all its threads) has had so far; 0 when it is gone or unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def guest_timer(pid: Callable[[], int | None], timeout: float) -> Callable[[], bool]:
    """over() is True once `timeout` is over both in wall time and in QEMU's CPU time (`pid()` is its
    pid), or after SLOW_FACTOR times `timeout` in wall time. A TCG guest on cores shared with parallel
    tests gets a fraction of a core: it is slow, not stuck, and is given the CPU time an idle machine
    would have given it; a guest that idles (hung) still fails, at the wall-clock cap."""
    wall0, cpu0 = time.monotonic(), cpu_seconds(pid())

    def over() -> bool:
        wall = time.monotonic() - wall0
        return wall > SLOW_FACTOR * timeout or (wall > timeout and cpu_seconds(pid()) - cpu0 > timeout)

    return over
