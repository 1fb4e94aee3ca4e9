"""Prometheus text exposition of the control plane's state."""

from __future__ import annotations

from sqlalchemy import func, select

from strato.db.engine import Database
from strato.db.models import Host, Job, StoragePool
from strato.engine.monitor import HostMonitor


def monitor_lines(monitor: HostMonitor) -> list[str]:
    """The host monitor's last round, as this server ran it (each server pings its share of hosts)."""
    last = monitor.last_round
    return [
        "# HELP strato_monitor_last_round_seconds Wall time of this server's last host monitor round",
        "# TYPE strato_monitor_last_round_seconds gauge",
        f"strato_monitor_last_round_seconds {last.seconds:.6f}",
        "# HELP strato_monitor_last_round_hosts Hosts pinged in the last round, by outcome",
        "# TYPE strato_monitor_last_round_hosts gauge",
        f'strato_monitor_last_round_hosts{{outcome="answered"}} {last.up}',
        f'strato_monitor_last_round_hosts{{outcome="failed"}} {last.failed}',
        f'strato_monitor_last_round_hosts{{outcome="all"}} {last.hosts}',
    ]


def render_metrics(db: Database, monitor: HostMonitor | None = None) -> str:
    lines: list[str] = monitor_lines(monitor) if monitor is not None else []
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
        # Three columns, not pool objects: every host has a local pool (a scrape over 1,000 of them
        # loaded as objects cost about 40 ms).
        pools = select(StoragePool.name, StoragePool.capacity_bytes, StoragePool.used_bytes).where(
            StoragePool.removed.is_(None)
        )
        for name, capacity, used in s.execute(pools).tuples():
            lines.append(f'strato_pool_capacity_bytes{{pool="{name}"}} {capacity}')
            lines.append(f'strato_pool_used_bytes{{pool="{name}"}} {used}')
    return "\n".join(lines) + "\n"
