"""The host planner and the storage pool allocator.

They pick a host with room for the VM and, for each disk, a pool the host reaches that matches the
disk's tags and storage type and has room for it (capacity times the over-provisioning factor, below the
disable threshold). A disk whose pool the owner chose is checked, not moved. When nothing fits, the
error says why for each disk and host, so that an admin can act on it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from strato.db.models import Cluster, Host, Layer, StoragePool, VirtualMachine, Volume
from strato.db.models.storage import LAYER_TEMPLATE, LAYER_VOLUME
from strato.errors import InsufficientCapacity
from strato.units import GIB

ACTIVE_VM_STATES = ("Starting", "Running", "Stopping", "Migrating")


@dataclass
class DiskRequest:
    label: str
    size: int
    tags: frozenset[str] = frozenset()
    storage_type: str = "shared"  # shared or local
    pool_id: str | None = None  # the owner's choice
    # A disk that is already on its pool (starting a VM): only reachability counts, not free space.
    existing: bool = False
    # Bytes this disk needs on its pool beyond its own size (a template copy not there yet).
    extra_by_pool: dict[str, int] = field(default_factory=dict)


@dataclass
class Plan:
    host: Host
    pools: list[StoragePool]


@dataclass
class Limits:
    overprovision: float
    disable_threshold: float


def pool_allocated(session: Session, pool_id: str) -> int:
    """Bytes promised on a pool: the virtual sizes of its volumes and of its template copies, and what VM
    snapshots hold there (frozen layers of volumes, memory files)."""
    return pools_allocated(session, [pool_id])[pool_id]


def pools_allocated(session: Session, pool_ids: Collection[str]) -> dict[str, int]:
    """pool_allocated of many pools in three queries (a page of listStoragePools)."""
    out = dict.fromkeys(pool_ids, 0)
    volumes = session.execute(
        select(Volume.pool_id, func.coalesce(func.sum(Volume.size), 0))
        .where(Volume.pool_id.in_(pool_ids), Volume.removed.is_(None), Volume.state != "Expunged")
        .group_by(Volume.pool_id)
    ).tuples()
    templates = session.execute(
        select(Layer.pool_id, func.coalesce(func.sum(Layer.virtual_size), 0))
        .where(Layer.pool_id.in_(pool_ids), Layer.removed.is_(None), Layer.kind == LAYER_TEMPLATE)
        .group_by(Layer.pool_id)
    ).tuples()
    # VM snapshots: their frozen layers and memory files take real space beyond the volumes' sizes.
    snapshots = session.execute(
        select(Layer.pool_id, func.coalesce(func.sum(Layer.physical_size), 0))
        .where(
            Layer.pool_id.in_(pool_ids),
            Layer.removed.is_(None),
            ((Layer.kind == LAYER_VOLUME) & Layer.frozen.is_(True)) | (Layer.kind == "memory"),
        )
        .group_by(Layer.pool_id)
    ).tuples()
    for pool_id, size in [*volumes, *templates, *snapshots]:
        if pool_id is not None:
            out[pool_id] = out.get(pool_id, 0) + int(size or 0)
    return out


def host_memory_used(session: Session, host_id: str) -> int:
    return hosts_memory_used(session, [host_id])[host_id]


def hosts_memory_used(session: Session, host_ids: Collection[str]) -> dict[str, int]:
    """Bytes of memory the active VMs of each host use, in one query (placement weighs every host of the
    zone: a query per host made a deploy cost grow with the zone's hosts)."""
    out = dict.fromkeys(host_ids, 0)
    ids = list(host_ids)
    for start in range(0, len(ids), 5000):
        used = session.execute(
            select(VirtualMachine.host_id, func.coalesce(func.sum(VirtualMachine.memory_mib), 0))
            .where(
                VirtualMachine.host_id.in_(ids[start : start + 5000]),
                VirtualMachine.removed.is_(None),
                VirtualMachine.state.in_(ACTIVE_VM_STATES),
            )
            .group_by(VirtualMachine.host_id)
        ).tuples()
        for host_id, mib in used:
            if host_id is not None:
                out[host_id] = int(mib or 0) * 1024 * 1024
    return out


def reaches(host: Host, pool: StoragePool) -> bool:
    if pool.scope == "HOST":
        return pool.host_id == host.id
    if pool.scope == "CLUSTER":
        return pool.cluster_id == host.cluster_id
    return pool.zone_id == host.zone_id


def _tags(pool: StoragePool) -> set[str]:
    return {t for t in (pool.tags or "").split(",") if t}


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


class Allocator:
    def __init__(self, session: Session, limits: Limits) -> None:
        self.session = session
        self.limits = limits
        self._allocated: dict[str, int] = {}

    def free(self, pool: StoragePool) -> int:
        if pool.id not in self._allocated:
            self._allocated[pool.id] = pool_allocated(self.session, pool.id)
        return int(pool.capacity_bytes * self.limits.overprovision) - self._allocated[pool.id]

    def reserve(self, pool: StoragePool, size: int) -> None:
        self.free(pool)
        self._allocated[pool.id] += size

    def why_not(self, pool: StoragePool, disk: DiskRequest, host: Host | None) -> str | None:
        """None when the pool suits the disk; otherwise the reason, in words."""
        if pool.removed is not None or pool.state != "Up":
            return f"pool {pool.name} is {pool.state}"
        if host is not None and not reaches(host, pool):
            return f"pool {pool.name} is not reachable from host {host.name}"
        if disk.pool_id is None:
            missing = set(disk.tags) - _tags(pool)
            if missing:
                return f"pool {pool.name} lacks tag {', '.join(sorted(missing))}"
            if (disk.storage_type == "local") != (pool.scope == "HOST"):
                return f"pool {pool.name} is not {disk.storage_type} storage"
        if disk.existing:
            return None
        fs_full = pool.used_bytes > pool.capacity_bytes * self.limits.disable_threshold
        if pool.capacity_bytes and not pool.capacity_fixed and fs_full:
            return (
                f"pool {pool.name} is {100 * pool.used_bytes / pool.capacity_bytes:.0f}% full, above the "
                f"{100 * self.limits.disable_threshold:.0f}% threshold"
            )
        need = disk.size + disk.extra_by_pool.get(pool.id, 0)
        if self.free(pool) < need:
            return f"pool {pool.name} has {_gib(max(0, self.free(pool)))} free, {disk.label} needs {_gib(need)}"
        return None

    def place_disks(
        self, host: Host | None, disks: list[DiskRequest], candidates: list[StoragePool]
    ) -> tuple[list[StoragePool] | None, list[str]]:
        chosen: list[StoragePool] = []
        reasons: list[str] = []
        snapshot = dict(self._allocated)
        for disk in disks:
            pools = [p for p in candidates if disk.pool_id in (None, p.id)]
            fits = [(p, self.why_not(p, disk, host)) for p in pools]
            good = sorted((p for p, why in fits if why is None), key=self.free, reverse=True)
            if not good:
                where = f"reachable from host {host.name}" if host else "in the zone"
                tag_text = f" with tag {', '.join(sorted(disk.tags))}" if disk.tags and not disk.pool_id else ""
                detail = "; ".join(why for _, why in fits if why) or "no pools at all"
                reasons.append(f"no pool{tag_text} {where} can take {disk.label} ({_gib(disk.size)}): {detail}")
                self._allocated = snapshot
                return None, reasons
            pool = good[0]
            self.reserve(pool, disk.size + disk.extra_by_pool.get(pool.id, 0))
            chosen.append(pool)
        return chosen, reasons


def zone_pools(session: Session, zone_id: str) -> list[StoragePool]:
    return list(
        session.scalars(
            select(StoragePool)
            .where(StoragePool.zone_id == zone_id, StoragePool.removed.is_(None))
            .order_by(StoragePool.created)
        )
    )


def plan(
    session: Session,
    zone_id: str,
    disks: list[DiskRequest],
    memory_mib: int,
    cpus: int,
    limits: Limits,
    host_id: str | None = None,
    prefer_host_id: str | None = None,
    need_host: bool = True,
) -> Plan:
    """Picks a host (Up, Enabled, memory free, reaching every chosen pool) and a pool per disk."""
    pools = zone_pools(session, zone_id)
    hosts_q = select(Host).where(Host.zone_id == zone_id, Host.removed.is_(None)).order_by(Host.created)
    hosts = list(session.scalars(hosts_q))
    if host_id:
        hosts = [h for h in hosts if h.id == host_id]
    used = hosts_memory_used(session, [h.id for h in hosts])
    hosts.sort(key=lambda h: (h.id != prefer_host_id, used[h.id] / max(1, h.memory_bytes)))
    reasons: list[str] = []
    for host in hosts:
        if host.status != "Up":
            reasons.append(f"host {host.name} is {host.status}")
            continue
        if host.resource_state != "Enabled":
            reasons.append(f"host {host.name} is {host.resource_state}")
            continue
        cluster = session.get(Cluster, host.cluster_id)
        if cluster is not None and cluster.allocation_state != "Enabled":
            reasons.append(f"cluster {cluster.name} of host {host.name} is {cluster.allocation_state}")
            continue
        free_mem = host.memory_bytes - used[host.id]
        if free_mem < memory_mib * 1024 * 1024:
            reasons.append(
                f"host {host.name} has {free_mem // (1024 * 1024)} MiB of memory free, the VM needs {memory_mib} MiB"
            )
            continue
        allocator = Allocator(session, limits)
        chosen, why = allocator.place_disks(host, disks, pools)
        if chosen is not None:
            return Plan(host=host, pools=chosen)
        reasons.extend(why)
    if not hosts:
        reasons.append("there is no host in the zone" if not host_id else f"host {host_id} is not in the zone")
    raise InsufficientCapacity("Unable to create a deployment for the VM: " + " | ".join(reasons))


def place_volume(
    session: Session,
    zone_id: str,
    disk: DiskRequest,
    limits: Limits,
    host: Host | None = None,
    hosts: Sequence[Host] | None = None,
) -> StoragePool:
    """A pool for a volume on its own: reachable from `host` when it will attach there; with `hosts`, from
    the first of them that reaches one with room (a stopped VM may start on any of them)."""
    pools = zone_pools(session, zone_id)
    tried: list[Host | None] = list(hosts) if hosts is not None else [host]
    reasons: list[str] = [] if tried else ["no host to reach a pool from"]
    for candidate in tried:
        chosen, why = Allocator(session, limits).place_disks(candidate, [disk], pools)
        if chosen is not None:
            return chosen[0]
        reasons.extend(why)
    raise InsufficientCapacity("Unable to find storage for the volume: " + " | ".join(reasons))
