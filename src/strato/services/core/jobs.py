"""Looking up async jobs for queryAsyncJobResult and listAsyncJobs, and cancelling them."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Account, Job, JobResource
from strato.db.models.jobs import JOB_ACTIVE
from strato.engine import queue
from strato.engine.operation import Operation
from strato.errors import InvalidParameter, NotFound
from strato.services.core.access import check_account_access, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page

P = TypeVar("P", bound=BaseModel)


def get_job(ctx: CallContext, job_id: str) -> Job:
    """An async job the caller may see (its own, or its accounts' as an admin), for queryAsyncJobResult."""
    job = ctx.session.scalar(select(Job).where(Job.id == job_id))
    if job is None:
        raise NotFound(f"Unable to find async job with id {job_id}")
    if job.account_id and job.account_id != ctx.account.id:
        acct = ctx.session.get(Account, job.account_id)
        if acct is None:
            raise NotFound(f"Unable to find async job with id {job_id}")
        try:
            check_account_access(ctx, acct)
        except Exception:
            raise NotFound(f"Unable to find async job with id {job_id}") from None
    return job


def list_jobs(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[Job], int]:
    """listAsyncJobs: the caller's jobs, newest first."""
    q = select(Job).where(owner_scope(ctx, args).condition(Job.account_id))
    if args.get("startdate"):
        q = q.where(Job.created >= args["startdate"])
    return run_page(ctx.session, q, page, (Job.cmd,), (Job.seq.desc(),))


def cancel_job(ctx: CallContext, job_id: str) -> Job:
    """Asks a queued or running job to stop; a queued one ends at once, a running one at its next step."""
    job = get_job(ctx, job_id)
    if job.status not in JOB_ACTIVE:
        raise InvalidParameter(f"Async job {job_id} has already ended ({job.status})")
    job.cancel_requested = True
    return job


def submit(
    ctx: CallContext,
    kind: str,
    cmd: str,
    params: dict[str, Any],
    resources: list[str],
    instance_type: str | None = None,
    instance_id: str | None = None,
) -> str:
    """Queues a job on behalf of the caller, in the caller's transaction; returns its id."""
    job = queue.submit(
        ctx.session,
        kind=kind,
        cmd=cmd,
        params=params,
        resources=resources,
        account_id=ctx.account.id,
        user_id=ctx.user.id,
        instance_type=instance_type,
        instance_id=instance_id,
    )
    return job.id


def submit_operation(
    ctx: CallContext,
    operation: type[Operation[P]],
    params: P,
    instance_type: str | None = None,
    instance_id: str | None = None,
    cmd: str | None = None,
) -> str:
    """Checks the operation's rules in the caller's transaction (the same `check` the job runs again when
    it starts under its locks), then queues it; returns the job id."""
    operation.check(ctx.session, params)
    return submit(
        ctx,
        operation.kind,
        cmd or operation.cmd,
        params.model_dump(mode="json"),
        operation.resources(params),
        instance_type,
        instance_id,
    )


def completed(ctx: CallContext, cmd: str, result: dict[str, Any], instance_type: str | None = None) -> str:
    """A job whose short work was done in the request (for commands CloudStack clients poll)."""
    job = queue.record_completed(
        ctx.session, cmd=cmd, result=result, account_id=ctx.account.id, user_id=ctx.user.id, instance_type=instance_type
    )
    return job.id


def active_on(session: Session, resource: str) -> bool:
    """Whether a queued or running job holds the resource (e.g. "vm:<id>")."""

    found = session.scalar(
        select(Job.seq).join(JobResource, JobResource.job_seq == Job.seq)
        .where(JobResource.resource == resource, Job.status.in_(JOB_ACTIVE)).limit(1)
    )  # fmt: skip
    return found is not None
