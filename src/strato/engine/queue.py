"""The job queue in the database: submission, claiming in order, and per-resource serialization."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from strato.db.base import utcnow
from strato.db.models import Job, JobResource
from strato.db.models.jobs import JOB_QUEUED, JOB_RUNNING, JOB_SUCCEEDED


def submit(
    session: Session,
    *,
    kind: str,
    cmd: str,
    params: dict[str, Any],
    resources: list[str],
    account_id: str | None,
    user_id: str | None,
    instance_type: str | None = None,
    instance_id: str | None = None,
) -> Job:
    """Queues a job in the caller's transaction: it exists exactly when the caller's changes commit."""
    job = Job(
        kind=kind,
        cmd=cmd,
        params=params,
        account_id=account_id,
        user_id=user_id,
        instance_type=instance_type,
        instance_id=instance_id,
    )
    session.add(job)
    session.flush()
    for res in sorted(set(resources)):
        session.add(JobResource(job_seq=job.seq, resource=res))
    session.flush()
    session.info["jobs_submitted"] = True  # the caller wakes the workers once this commits
    return job


def record_completed(
    session: Session,
    *,
    cmd: str,
    result: dict[str, Any],
    account_id: str | None,
    user_id: str | None,
    instance_type: str | None = None,
) -> Job:
    """A job that did its (short) work in the request: for commands CloudStack declares async, whose
    clients expect a job id to poll, but whose work is a few rows."""
    now = utcnow()
    job = Job(
        kind="inline",
        cmd=cmd,
        params={},
        status=JOB_SUCCEEDED,
        result=result,
        account_id=account_id,
        user_id=user_id,
        instance_type=instance_type,
        started=now,
        completed=now,
        attempts=1,
    )
    session.add(job)
    session.flush()
    return job


def _unblocked_queued(is_postgres: bool, limit: int) -> Any:
    """Queued jobs none of whose resources is held by a running job, or by an earlier queued one;
    oldest first. (A running job blocks whatever its seq: on PostgreSQL seqs are handed out before
    commit, so a later seq can be claimed before an earlier one becomes visible.)"""
    mine = aliased(JobResource)
    theirs = aliased(JobResource)
    other = aliased(Job)
    blocked = exists(
        select(1)
        .select_from(mine)
        .join(theirs, theirs.resource == mine.resource)
        .join(other, other.seq == theirs.job_seq)
        .where(
            and_(
                mine.job_seq == Job.seq,
                other.seq != Job.seq,
                or_(other.status == JOB_RUNNING, and_(other.seq < Job.seq, other.status == JOB_QUEUED)),
            )
        )
    )
    q = select(Job).where(Job.status == JOB_QUEUED, ~blocked).order_by(Job.seq).limit(limit)
    if is_postgres:
        q = q.with_for_update(skip_locked=True, of=Job)
    return q


def claim(session: Session, owner: str, limit: int, is_postgres: bool) -> list[Job]:
    """Marks up to `limit` runnable jobs as running on `owner` and returns them."""
    if limit <= 0:
        return []
    claimed: list[Job] = []
    for job in session.scalars(_unblocked_queued(is_postgres, limit)).all():
        res = session.execute(
            update(Job)
            .where(Job.seq == job.seq, Job.status == JOB_QUEUED)
            .values(status=JOB_RUNNING, owner=owner, started=utcnow(), attempts=Job.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        if getattr(res, "rowcount", 0) == 1:
            session.refresh(job)
            claimed.append(job)
    return claimed


def take_over(session: Session, seq: int, dead_owners: list[str], new_owner: str) -> bool:
    """Moves a dead server's running job to `new_owner`; False when another server got it first."""
    res = session.execute(
        update(Job)
        .where(Job.seq == seq, Job.status == JOB_RUNNING, Job.owner.in_(dead_owners))
        .values(owner=new_owner)
        .execution_options(synchronize_session=False)
    )
    return getattr(res, "rowcount", 0) == 1


def orphaned(session: Session, dead_owners: list[str]) -> list[Job]:
    if not dead_owners:
        return []
    return list(
        session.scalars(select(Job).where(Job.status == JOB_RUNNING, Job.owner.in_(dead_owners)).order_by(Job.seq))
    )
