"""Periodic housekeeping: finished jobs expire (job.expire.minutes), and destroyed VMs are expunged
once their recovery window (expunge.delay) has passed, as CloudStack's expunge thread does."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import exists, select

from strato.db.base import utcnow
from strato.db.engine import Database
from strato.db.models import Job, JobResource, VirtualMachine
from strato.db.models.jobs import JOB_ACTIVE
from strato.engine import queue
from strato.engine.periodic import periodic
from strato.engine.runner import purge_expired_jobs
from strato.services.core import settings


@periodic("expire-jobs", every_s=60)
def expire_jobs(db: Database) -> None:
    with db.session() as s:
        minutes = int(settings.get(s, "job.expire.minutes"))
    purge_expired_jobs(db, timedelta(minutes=minutes))


@periodic("expunge-destroyed-vms", every_s=10)
def expunge_destroyed_vms(db: Database) -> None:
    """Queues an expunge for every VM destroyed longer ago than expunge.delay (none already queued)."""
    with db.session() as s:
        delay = int(settings.get(s, "expunge.delay"))
        limit = utcnow() - timedelta(seconds=delay)
        busy = exists(
            select(1)
            .select_from(JobResource)
            .join(Job, Job.seq == JobResource.job_seq)
            .where(JobResource.resource == "vm:" + VirtualMachine.id, Job.status.in_(JOB_ACTIVE))
        )
        due = s.scalars(
            select(VirtualMachine).where(
                VirtualMachine.state == "Destroyed",
                VirtualMachine.removed.is_(None),
                VirtualMachine.destroyed_at.is_not(None),
                VirtualMachine.destroyed_at <= limit,
                ~busy,
            )
        )
        for vm in due:
            queue.submit(
                s,
                kind="vm.expunge",
                cmd="expungeVirtualMachine",
                params={"vm_id": vm.id, "expect_state": "Destroyed"},
                resources=[f"vm:{vm.id}"],
                account_id=vm.account_id,
                user_id=None,
                instance_type="VirtualMachine",
                instance_id=vm.id,
            )
