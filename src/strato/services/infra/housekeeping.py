"""Periodic housekeeping: finished jobs expire (job.expire.minutes). (Destroyed VMs are expunged once
their recovery window has passed by services.compute.destroy, beside the expunge operation.)"""

from __future__ import annotations

from datetime import timedelta

from strato.db.engine import Database
from strato.engine.periodic import periodic
from strato.engine.runner import purge_expired_jobs
from strato.services.core import settings


@periodic("expire-jobs", every_s=60)
def expire_jobs(db: Database) -> None:
    """Finished jobs are kept job.expire.minutes for queryAsyncJobResult, then purged."""
    with db.session() as s:
        minutes = int(settings.get(s, "job.expire.minutes"))
    purge_expired_jobs(db, timedelta(minutes=minutes))
