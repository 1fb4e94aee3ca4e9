"""The registry of job kinds: what a job does, how it recovers after a crash, how it fails cleanly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from strato.db.models import Job
    from strato.engine.context import JobContext

JobResult = dict[str, Any]


@dataclass(frozen=True)
class JobKind:
    name: str
    run: Callable[[JobContext], JobResult]
    # Called instead of `run` when the job was running on a server that died. It asks for ground
    # truth and finishes or rolls back. None: the kind cannot recover, and the job is failed.
    recover: Callable[[JobContext], JobResult] | None = None
    # Puts the job's resources back in a stable state after a failure (in the same transaction that
    # records the failure).
    on_fail: Callable[[Session, Job], None] | None = None
    # The audit event type recorded when the job ends.
    event: str | None = None


KINDS: dict[str, JobKind] = {}


def job_kind(
    name: str,
    *,
    recover: Callable[[JobContext], JobResult] | None = None,
    on_fail: Callable[[Session, Job], None] | None = None,
    event: str | None = None,
) -> Callable[[Callable[[JobContext], JobResult]], Callable[[JobContext], JobResult]]:
    def register(fn: Callable[[JobContext], JobResult]) -> Callable[[JobContext], JobResult]:
        if name in KINDS:
            raise RuntimeError(f"job kind {name} declared twice")
        KINDS[name] = JobKind(name=name, run=fn, recover=recover, on_fail=on_fail, event=event)
        return fn

    return register


def get_kind(name: str) -> JobKind | None:
    return KINDS.get(name)
