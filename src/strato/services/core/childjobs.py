"""Jobs that a running job queues and waits for: how an operation made of other operations (storage
or host maintenance moving every disk or VM away) reuses them whole, each with its own locks, step log,
recovery and events, instead of copying their steps.

A child is queued under the parent's account and user; the parent waits for it by polling its row,
reporting progress as it goes (which is also where a cancelled parent notices, and cancels its child).
A parent that is recovered after a crash finds its children again by the resources they lock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import select

from strato.db.models import Job, JobResource
from strato.db.models.jobs import JOB_ACTIVE, JOB_SUCCEEDED
from strato.engine import queue
from strato.engine.context import JobCancelled, JobContext
from strato.engine.operation import Operation

P = TypeVar("P", bound=BaseModel)

POLL_S = 0.3


def submit_child(
    job: JobContext,
    operation: type[Operation[P]],
    params: P,
    instance_type: str | None = None,
    instance_id: str | None = None,
) -> str:
    """Checks the child's rules (CloudError if they refuse) and queues it; returns its job id."""
    with job.db.session() as s:
        operation.check(s, params)
        child = queue.submit(
            s,
            kind=operation.kind,
            cmd=operation.cmd,
            params=params.model_dump(mode="json"),
            resources=operation.resources(params),
            account_id=job.account_id,
            user_id=job.user_id,
            instance_type=instance_type,
            instance_id=instance_id,
        )
        return child.id


def active_job_on(job: JobContext, resource: str, kind: str) -> str | None:
    """The id of an unfinished job of `kind` that locks `resource` (a child queued before a crash)."""
    with job.db.session() as s:
        return s.scalar(
            select(Job.id)
            .join(JobResource, JobResource.job_seq == Job.seq)
            .where(JobResource.resource == resource, Job.kind == kind, Job.status.in_(JOB_ACTIVE))
            .limit(1)
        )


class ChildFailed(Exception):
    """A child job ended without success; `text` is its error as the API shows it."""

    def __init__(self, job_id: str, text: str) -> None:
        super().__init__(text)
        self.job_id = job_id
        self.text = text


ChildProgress = Callable[[int, int, dict[str, Any]], None]
"""(the child's progress done, total, its progress detail): the parent reports its own progress from it."""


def wait_child(
    job: JobContext,
    child_id: str,
    done_before: int,
    total: int,
    timeout_s: float = 7200.0,
    report: ChildProgress | None = None,
) -> None:
    """Waits for the child to end, reporting the parent's progress as `done_before` plus the child's
    share of one unit out of `total` units (or through `report`, given the child's figures); raises
    ChildFailed with the child's error. A cancelled parent cancels the child and raises JobCancelled."""
    deadline = time.monotonic() + timeout_s
    while True:
        with job.db.session() as s:
            child = s.scalar(select(Job).where(Job.id == child_id))
            if child is None:
                raise ChildFailed(child_id, f"job {child_id} is gone")
            status, result = child.status, dict(child.result or {})
            share = child.progress_done / child.progress_total if child.progress_total else 0.0
            figures = (child.progress_done, child.progress_total, dict(child.progress_detail or {}))
        if status not in JOB_ACTIVE:
            if status == JOB_SUCCEEDED:
                return
            raise ChildFailed(child_id, str(result.get("errortext") or f"job {child_id} {status}"))
        try:
            if report is not None:
                report(*figures)
            else:
                job.progress(int(1000 * (done_before + share)), 1000 * max(total, 1))
        except JobCancelled:
            with job.db.session() as s:
                child = s.scalar(select(Job).where(Job.id == child_id))
                if child is not None and child.status in JOB_ACTIVE:
                    child.cancel_requested = True
            raise
        if time.monotonic() > deadline:
            raise ChildFailed(child_id, f"job {child_id} still {status} after {timeout_s:g} s")
        time.sleep(POLL_S)
