"""Fault injection at step boundaries, for the step-fault tests.

A server started with STRATO_FAULT_FILE=<path> reads that file after every step of an operation. When it
holds a line "<job kind> <step name>" (or "* <step name>") matching the step just done, the file is emptied
and the worker stops there as if its server had died: the job is left running, with its step log as it is,
and the runner then recovers it the way a restarted server would. Without the variable nothing is read.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("strato.jobs")

FAULT_FILE_ENV = "STRATO_FAULT_FILE"
_lock = threading.Lock()


class WorkerStopped(BaseException):
    """The worker stopped at a step boundary (fault injection): nothing after it runs in this attempt."""


def after_step(kind: str, step: str) -> None:
    """Stops the worker here when the fault file names this step."""
    path = os.environ.get(FAULT_FILE_ENV)
    if not path:
        return
    with _lock:
        try:
            wanted = Path(path).read_text().strip()
        except OSError:
            return
        if not wanted:
            return
        want_kind, _, want_step = wanted.partition(" ")
        if want_step != step or want_kind not in ("*", kind):
            return
        Path(path).write_text("")
    log.warning("fault injection: worker stops after step %r of %s", step, kind)
    raise WorkerStopped(f"{kind}: {step}")
