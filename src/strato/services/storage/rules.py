"""The rules of a VM's data disks, written once: deploy (services/compute) and attachVolume / createVolume
with a VM (services/storage) ask the same functions, so they refuse the same things with the same text.
Where a new disk of a VM is created (`pool_for_new_disk`) is one of them: createVolume with a VM and the
attach of an Allocated volume place it by the same rule."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from strato.db.models import DiskOffering, Host, StoragePool, VirtualMachine, VMSnapshot, Volume
from strato.engine.allocator import DiskRequest, place_volume, reaches
from strato.errors import InsufficientCapacity, InvalidParameter, PermissionDenied
from strato.services.core.settings import allocation_limits, capability_for
from strato.services.core.states import require_vm_state
from strato.services.storage.volumes import running_host


def capability_hypervisor(hypervisor: str | None) -> str:
    """The hypervisor whose capabilities row applies (anything but the simulator counts as KVM)."""
    return "Simulator" if hypervisor == "Simulator" else "KVM"


def check_data_disk_limit(session: Session, hypervisor: str | None, data_disks: int, who: str = "The VM") -> None:
    """Refuses (InvalidParameter, 431) a VM that would have more than its hypervisor's maxdatavolumeslimit
    data disks; `data_disks` counts them all, those it has and those it would get."""
    limit = capability_for(session, capability_hypervisor(hypervisor)).max_data_volumes_limit
    if data_disks > limit:
        raise InvalidParameter(
            f"{who} would have {data_disks} data disks; the hypervisor's limit (maxdatavolumeslimit) is {limit}"
        )


def data_disk_count(session: Session, vm_id: str, excluding: str | None = None) -> int:
    """The data disks attached to a VM (not counting the volume `excluding`)."""
    q = (
        select(func.count())
        .select_from(Volume)
        .where(Volume.vm_id == vm_id, Volume.removed.is_(None), Volume.volume_type == "DATADISK")
    )
    if excluding is not None:
        q = q.where(Volume.id != excluding)
    return int(session.scalar(q) or 0)


def check_attach(session: Session, vm: VirtualMachine, volume: Volume | None, pool: StoragePool | None = None) -> None:
    """Attach's rules: the VM Running or Stopped, the volume Ready (or Allocated: created on a pool at the
    attach), detached, of the VM's account and zone, room under the data-disk limit, and the volume's pool
    (or the one its owner asked for) reachable from the host a running VM is on.
    `volume` is None for createVolume with a VM before the volume exists (`pool`: the one asked for)."""
    require_vm_state(vm, "Running", "Stopped", action="attach a volume to")
    if volume is not None:
        if volume.vm_id:
            raise InvalidParameter(f"Volume {volume.name} is already attached to a VM")
        if volume.state not in ("Ready", "Allocated") or volume.removed is not None:
            raise InvalidParameter(
                f"Volume {volume.name} is {volume.state}; only Ready or Allocated volumes can be attached"
            )
        if volume.account_id != vm.account_id:
            raise PermissionDenied("A volume can only be attached to a VM of the same account")
        if volume.zone_id != vm.zone_id:
            raise InvalidParameter(f"Volume {volume.name} is in another zone than VM {vm.name}")
        if pool is None and (volume.pool_id or volume.requested_pool_id):
            pool = session.get(StoragePool, volume.pool_id or volume.requested_pool_id)
    excluding = volume.id if volume is not None else None
    check_data_disk_limit(session, vm.hypervisor, data_disk_count(session, vm.id, excluding) + 1, f"VM {vm.name}")
    host = session.get(Host, vm.host_id) if vm.state == "Running" and vm.host_id else None
    if host is not None and pool is not None and not reaches(host, pool):
        what = f"of volume {volume.name} " if volume is not None else ""
        raise InvalidParameter(f"Pool {pool.name} {what}is not reachable from host {host.name} where VM {vm.name} runs")


def disk_request(session: Session, volume: Volume) -> DiskRequest:
    """What the allocator needs of a volume not yet on a pool: its size, its offering's tags and storage
    type, and the pool its owner asked for."""
    offering = session.get(DiskOffering, volume.disk_offering_id) if volume.disk_offering_id else None
    return DiskRequest(
        label=f"volume {volume.name}",
        size=volume.size,
        tags=frozenset(t for t in ((offering.tags if offering else None) or "").split(",") if t),
        storage_type=(offering.storage_type if offering else None) or "shared",
        pool_id=volume.requested_pool_id,
    )


def placement_hosts(session: Session, vm: VirtualMachine) -> tuple[list[Host], StoragePool | None]:
    """The hosts a new disk of the VM must be reachable from (any one of them), and the VM's root pool.

    A running VM: its host. A stopped VM: as CloudStack, the scope of its root disk's pool, i.e. the hosts
    that reach that pool, its last host first (so the VM can start with both disks, and where it last
    ran when it can); a root disk on a host's local pool pins it to that host."""
    host = running_host(session, vm)
    if host is not None:
        return [host], None
    root = session.scalar(
        select(Volume).where(Volume.vm_id == vm.id, Volume.volume_type == "ROOT", Volume.removed.is_(None))
    )
    root_pool = session.get(StoragePool, root.pool_id) if root is not None and root.pool_id else None
    hosts = list(
        session.scalars(select(Host).where(Host.zone_id == vm.zone_id, Host.removed.is_(None)).order_by(Host.created))
    )
    if root_pool is not None:
        hosts = [h for h in hosts if reaches(h, root_pool)]
    hosts.sort(key=lambda h: h.id != vm.last_host_id)
    return hosts, root_pool


def pool_for_new_disk(session: Session, volume: Volume, vm: VirtualMachine | None) -> StoragePool:
    """The pool an Allocated volume is created on (InsufficientCapacity, 533, with the reason per pool
    when none suits): for a VM, one `placement_hosts` reach; the allocator checks the offering's tags,
    the storage type (a host's local pool for local offerings) and the room left."""
    limits = allocation_limits(session)
    if vm is None:
        return place_volume(session, volume.zone_id, disk_request(session, volume), limits)
    hosts, root_pool = placement_hosts(session, vm)
    if not hosts:
        where = f"pool {root_pool.name} of its root disk" if root_pool is not None else "a pool"
        raise InsufficientCapacity(
            f"Unable to find storage for volume {volume.name}: no host of the zone reaches {where} (VM {vm.name})"
        )
    return place_volume(session, volume.zone_id, disk_request(session, volume), limits, hosts=hosts)


def refuse_with_vm_snapshots(session: Session, vm_id: str | None, action: str) -> None:
    """CloudStack's rule: a VM's disks cannot change (attach, detach, resize, scale) while it has VM
    snapshots (their layers hold the old disk set), answered 431 saying to delete them first."""
    if vm_id is None:
        return
    q = select(func.count()).select_from(VMSnapshot).where(VMSnapshot.vm_id == vm_id, VMSnapshot.removed.is_(None))
    if int(session.scalar(q) or 0):
        raise InvalidParameter(f"Unable to {action}: the VM has VM snapshots; please delete its VM snapshots first")
