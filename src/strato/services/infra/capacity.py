"""listCapacity: per-zone sums of host CPU and memory and of pool capacity, from the agents' reports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Host, StoragePool, Zone
from strato.services.core import settings
from strato.services.core.context import CallContext

CAPACITY_MEMORY, CAPACITY_CPU, CAPACITY_STORAGE, CAPACITY_STORAGE_ALLOCATED = 0, 1, 2, 3
NAMES = {0: "MEMORY", 1: "CPU", 2: "STORAGE", 3: "STORAGE_ALLOCATED"}

# Usage contributed by later areas (VMs use memory and CPU; volumes allocate storage).
HostUsage = Callable[[Session, Host], tuple[int, int]]  # (memory bytes, cpu MHz) allocated
PoolUsage = Callable[[Session, StoragePool], int]  # bytes allocated
HOST_USAGE: list[HostUsage] = []
POOL_USAGE: list[PoolUsage] = []


def list_capacity(ctx: CallContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    """listCapacity: memory, CPU and storage used and total, per zone, pod or cluster."""
    hq = select(Host).where(Host.removed.is_(None))
    pq = select(StoragePool).where(StoragePool.removed.is_(None))
    for param, hcol, pcol in (
        ("zoneid", Host.zone_id, StoragePool.zone_id),
        ("podid", Host.pod_id, StoragePool.pod_id),
        ("clusterid", Host.cluster_id, StoragePool.cluster_id),
    ):
        if args.get(param):
            hq, pq = hq.where(hcol == args[param]), pq.where(pcol == args[param])
    overprovision = settings.get(ctx.session, "storage.overprovisioning.factor")
    totals: dict[tuple[str, int], list[int]] = {}

    def add(zone: str, kind: int, total: int, used: int) -> None:
        acc = totals.setdefault((zone, kind), [0, 0])
        acc[0] += total
        acc[1] += used

    for h in ctx.session.scalars(hq):
        mem = cpu = 0
        for fn in HOST_USAGE:
            m, c = fn(ctx.session, h)
            mem, cpu = mem + m, cpu + c
        add(h.zone_id, CAPACITY_MEMORY, h.memory_bytes, mem)
        add(h.zone_id, CAPACITY_CPU, h.cpus * h.cpu_mhz, cpu)
    for p in ctx.session.scalars(pq):
        add(p.zone_id, CAPACITY_STORAGE, p.capacity_bytes, p.used_bytes)
        allocated = sum(fn(ctx.session, p) for fn in POOL_USAGE)
        add(p.zone_id, CAPACITY_STORAGE_ALLOCATED, int(p.capacity_bytes * overprovision), allocated)
    out = []
    for (zone_id, kind), (total, used) in sorted(totals.items()):
        if args.get("type") is not None and args["type"] != kind:
            continue
        zone = ctx.session.get(Zone, zone_id)
        out.append(
            {
                "type": kind,
                "name": NAMES[kind],
                "zoneid": zone_id,
                "zonename": zone.name if zone else None,
                "capacitytotal": total,
                "capacityused": used,
                "percentused": f"{(100.0 * used / total) if total else 0:.2f}",
            }
        )
    return out
