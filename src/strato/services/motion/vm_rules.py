"""The rules of moving a VM to another host or its disks to another pool, written once: findHostsForMigration
shows them per host, and migrateVirtualMachine(WithVolume) refuses with them (at the request and again
when the job starts under its locks)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from strato.db.models import Cluster, Host, StoragePool, VirtualMachine, Volume
from strato.engine.allocator import ACTIVE_VM_STATES, Allocator, DiskRequest, host_memory_used, reaches
from strato.errors import CloudError, InsufficientCapacity, InvalidParameter, NotFound
from strato.services.core.settings import allocation_limits
from strato.services.core.states import VM_TRANSITIONAL, VOLUME_TRANSITIONAL
from strato.services.motion.tree import tree_bytes
from strato.services.storage.disks import attached_volumes

MIB = 1 << 20
WITH_VOLUME = "migrateVirtualMachineWithVolume"


def host_cpu_used(session: Session, host_id: str) -> int:
    """MHz promised to the VMs on a host (cpus x speed of each active VM)."""
    mhz = session.scalar(
        select(func.coalesce(func.sum(VirtualMachine.cpu_number * VirtualMachine.cpu_speed), 0)).where(
            VirtualMachine.host_id == host_id, VirtualMachine.removed.is_(None),
            VirtualMachine.state.in_(ACTIVE_VM_STATES),
        )
    )  # fmt: skip
    return int(mhz or 0)


def can_migrate_live(host: Host) -> bool:
    """The host's agent reported the live_migration capability (both roles of the driver)."""
    return bool((host.capabilities or {}).get("live_migration"))


def can_move_offline(host: Host) -> bool:
    return bool((host.capabilities or {}).get("offline_storage_motion"))


@dataclass(frozen=True)
class HostFit:
    """How a host suits a VM's move: `reason` is None when it does."""

    reason: str | None
    requires_storage_motion: bool
    unreachable: tuple[str, ...] = ()
    """Names of the VM's volumes whose pools the host cannot reach."""


def host_problem(session: Session, vm: VirtualMachine, host: Host) -> CloudError | None:
    """Why `host` cannot take the running VM `vm` (its disks aside), as the error migrateVirtualMachine
    answers; None when it can."""
    if host.id == vm.host_id:
        return InvalidParameter(
            f"Cannot migrate VM {vm.name}: it is already on host {host.name}; parameter hostid must name another host"
        )
    if host.zone_id != vm.zone_id:
        return InvalidParameter(f"Cannot migrate VM {vm.name}: host {host.name} (hostid) is in another zone")
    if host.hypervisor != vm.hypervisor:
        return InvalidParameter(
            f"Cannot migrate VM {vm.name}: host {host.name} (hostid) runs {host.hypervisor}, the VM {vm.hypervisor}"
        )
    if host.status != "Up":
        return InvalidParameter(
            f"Cannot migrate VM {vm.name}: destination host {host.name} (hostid) is {host.status}, not Up"
        )
    if host.resource_state != "Enabled":
        return InvalidParameter(
            f"Cannot migrate VM {vm.name}: destination host {host.name} (hostid) is {host.resource_state}"
        )
    cluster = session.get(Cluster, host.cluster_id)
    if cluster is not None and cluster.allocation_state != "Enabled":
        return InvalidParameter(
            f"Cannot migrate VM {vm.name}: the cluster {cluster.name} of host {host.name} is {cluster.allocation_state}"
        )
    if not can_migrate_live(host):
        return InvalidParameter(
            f"Cannot migrate VM {vm.name}: host {host.name} (hostid) does not support live migration "
            "(its driver does not report the live_migration capability)"
        )
    free_mem = host.memory_bytes - host_memory_used(session, host.id)
    if free_mem < vm.memory_mib * MIB:
        return InsufficientCapacity(
            f"Cannot migrate VM {vm.name}: host {host.name} has {max(0, free_mem) // MIB} MiB of memory free, "
            f"the VM needs {vm.memory_mib} MiB"
        )
    free_cpu = host.cpus * host.cpu_mhz - host_cpu_used(session, host.id)
    need_cpu = vm.cpu_number * vm.cpu_speed
    if free_cpu < need_cpu:
        return InsufficientCapacity(
            f"Cannot migrate VM {vm.name}: host {host.name} has {max(0, free_cpu)} MHz of CPU free, "
            f"the VM needs {need_cpu} MHz"
        )
    return None


def host_fit(session: Session, vm: VirtualMachine, host: Host) -> HostFit:
    """findHostsForMigration's view of one host: suitable or the reason, and whether disks must move."""
    unreachable = tuple(
        v.name for v in attached_volumes(session, vm.id)
        if v.pool_id and (p := session.get(StoragePool, v.pool_id)) is not None and not reaches(host, p)
    )  # fmt: skip
    problem = host_problem(session, vm, host)
    return HostFit(problem.text if problem else None, bool(unreachable), unreachable)


def check_source(session: Session, vm: VirtualMachine) -> Host:
    """The running VM's own host, which must be able to send it."""
    if vm.state != "Running" or not vm.host_id:
        raise InvalidParameter(
            f"VM {vm.name} (virtualmachineid) is {vm.state}; it must be Running to move to another host"
        )
    source = session.get(Host, vm.host_id)
    if source is None or source.removed is not None:
        raise InvalidParameter(f"VM {vm.name} (virtualmachineid) has no host")
    if not can_migrate_live(source):
        raise InvalidParameter(
            f"Cannot migrate VM {vm.name}: its host {source.name} does not support live migration "
            "(its driver does not report the live_migration capability)"
        )
    return source


def check_not_busy(session: Session, vm: VirtualMachine, volumes: list[Volume]) -> None:
    if vm.state in VM_TRANSITIONAL:
        raise InvalidParameter(f"VM {vm.name} (virtualmachineid) is {vm.state}: another job is working on it")
    for vol in volumes:
        if vol.state in VOLUME_TRANSITIONAL:
            raise InvalidParameter(f"Volume {vol.name} of VM {vm.name} is {vol.state}: another job is working on it")
        if vol.state != "Ready" or not vol.top_layer_id or not vol.pool_id:
            raise InvalidParameter(f"Volume {vol.name} of VM {vm.name} is {vol.state}; it cannot move")


def target_pool(session: Session, pool_id: str, vm: VirtualMachine, param: str) -> StoragePool:
    pool = session.get(StoragePool, pool_id)
    if pool is None or pool.removed is not None:
        raise NotFound(f"Unable to find storage pool with {param}={pool_id}")
    if pool.zone_id != vm.zone_id:
        raise InvalidParameter(f"Storage pool {pool.name} ({param}) is in another zone than VM {vm.name}")
    if pool.state != "Up":
        raise InvalidParameter(f"Storage pool {pool.name} ({param}) is {pool.state}, not Up")
    return pool


def check_pool_room(session: Session, moves: list[tuple[Volume, StoragePool]], host: Host | None) -> None:
    """Each moving volume fits on its pool (all of them together), reachable from `host` when given."""
    allocator = Allocator(session, allocation_limits(session))
    for vol, pool in moves:
        size = vol.size + tree_bytes(session, vol, pool.id)
        disk = DiskRequest(label=f"volume {vol.name}", size=size, pool_id=pool.id)
        why = allocator.why_not(pool, disk, host)
        if why is not None:
            if "free" in why or "full" in why:
                raise InsufficientCapacity(f"Cannot move volume {vol.name}: {why}")
            raise InvalidParameter(f"Cannot move volume {vol.name}: {why}")
        allocator.reserve(pool, size)
