"""The rules of a VM's data disks, written once: deploy (services/compute) and attachVolume / createVolume
with a VM (services/storage) ask the same functions, so they refuse the same things with the same text."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from strato.db.models import Host, StoragePool, VirtualMachine, Volume
from strato.engine.allocator import reaches
from strato.errors import InvalidParameter, PermissionDenied
from strato.services.core.settings import capability_for
from strato.services.core.states import require_vm_state


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
    """Attach's rules: the VM Running or Stopped, the volume Ready, detached, of the VM's account and zone,
    room under the data-disk limit, and the volume's pool reachable from the host a running VM is on.
    `volume` is None for createVolume with a VM before the volume exists (`pool`: the one asked for)."""
    require_vm_state(vm, "Running", "Stopped", action="attach a volume to")
    if volume is not None:
        if volume.vm_id:
            raise InvalidParameter(f"Volume {volume.name} is already attached to a VM")
        if volume.state != "Ready" or volume.removed is not None:
            raise InvalidParameter(f"Volume {volume.name} is {volume.state}; only Ready volumes can be attached")
        if volume.account_id != vm.account_id:
            raise PermissionDenied("A volume can only be attached to a VM of the same account")
        if volume.zone_id != vm.zone_id:
            raise InvalidParameter(f"Volume {volume.name} is in another zone than VM {vm.name}")
        if pool is None and volume.pool_id:
            pool = session.get(StoragePool, volume.pool_id)
    excluding = volume.id if volume is not None else None
    check_data_disk_limit(session, vm.hypervisor, data_disk_count(session, vm.id, excluding) + 1, f"VM {vm.name}")
    host = session.get(Host, vm.host_id) if vm.state == "Running" and vm.host_id else None
    if host is not None and pool is not None and not reaches(host, pool):
        what = f"of volume {volume.name} " if volume is not None else ""
        raise InvalidParameter(f"Pool {pool.name} {what}is not reachable from host {host.name} where VM {vm.name} runs")
