"""Prometheus text exposition of the control plane's state."""

from __future__ import annotations

from sqlalchemy import func, select

from strato.db.engine import Database
from strato.db.models import Host, Job, StoragePool


def render_metrics(db: Database) -> str:
    lines: list[str] = []
    with db.session() as s:
        lines.append("# HELP strato_jobs Async jobs by status")
        lines.append("# TYPE strato_jobs gauge")
        for status, count in s.execute(select(Job.status, func.count()).group_by(Job.status)):
            lines.append(f'strato_jobs{{status="{status}"}} {count}')
        lines.append("# HELP strato_hosts Hosts by connection status")
        lines.append("# TYPE strato_hosts gauge")
        for status, count in s.execute(
            select(Host.status, func.count()).where(Host.removed.is_(None)).group_by(Host.status)
        ):
            lines.append(f'strato_hosts{{status="{status}"}} {count}')
        lines.append("# HELP strato_pool_capacity_bytes Capacity of each storage pool")
        lines.append("# TYPE strato_pool_capacity_bytes gauge")
        for pool in s.scalars(select(StoragePool).where(StoragePool.removed.is_(None))):
            lines.append(f'strato_pool_capacity_bytes{{pool="{pool.name}"}} {pool.capacity_bytes}')
            lines.append(f'strato_pool_used_bytes{{pool="{pool.name}"}} {pool.used_bytes}')
    return "\n".join(lines) + "\n"
