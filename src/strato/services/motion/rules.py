"""The rules of moving a volume to a pool, written once: migrateVolume's check (at the request and again
when its job starts) and findStoragePoolsForMigration's reasons (the same words, one per pool)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from strato.db.models import DiskOffering, Host, HypervisorCapability, StoragePool, VirtualMachine, Volume
from strato.db.models.storage import LAYER_TEMPLATE
from strato.engine.allocator import Allocator, DiskRequest, reaches
from strato.errors import InsufficientCapacity, InvalidParameter, InvalidState, NotFound
from strato.protocol.capabilities import DriverCapabilities
from strato.services.core.reach import up_hosts
from strato.services.core.settings import allocation_limits
from strato.services.motion.chains import chain_rows, pool_copy
from strato.services.motion.tree import tree_bytes

LIVE_VM_STATES = ("Running",)
OFFLINE_VM_STATES = ("Stopped",)


@dataclass(frozen=True)
class Move:
    """What a request to move a volume names, resolved."""

    volume: Volume
    pool: StoragePool
    vm: VirtualMachine | None
    live: bool


def live_volume(session: Session, volume_id: str) -> Volume:
    vol = session.get(Volume, volume_id)
    if vol is None or vol.removed is not None or vol.state in ("Destroy", "Expunged"):
        raise NotFound(f"Unable to find volume with id {volume_id} (parameter volumeid)")
    return vol


def live_pool(session: Session, pool_id: str) -> StoragePool:
    pool = session.get(StoragePool, pool_id)
    if pool is None or pool.removed is not None:
        raise NotFound(f"Unable to find storage pool with id {pool_id} (parameter storageid)")
    return pool


def vm_of(session: Session, vol: Volume) -> VirtualMachine | None:
    vm = session.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
    return vm if vm is not None and vm.removed is None else None


def wants_live(vm: VirtualMachine | None) -> bool:
    """The strategy: a disk of a VM running on a host moves live; any other disk moves offline."""
    return vm is not None and vm.state == "Running" and vm.host_id is not None


def check_volume(session: Session, vol: Volume, vm: VirtualMachine | None, live: bool) -> None:
    """The volume and its VM are in states a move can start from (and the strategy still fits)."""
    if vol.state == "Migrating":
        raise InvalidState(f"Parameter volumeid: volume {vol.name} is already being moved (it is Migrating)")
    if vol.state != "Ready" or not vol.top_layer_id or not vol.pool_id:
        raise InvalidState(f"Parameter volumeid: volume {vol.name} is {vol.state}; only a Ready volume can be moved")
    if vm is None:
        if live:
            raise InvalidState(f"Parameter volumeid: volume {vol.name} was detached; its VM no longer runs it")
        return
    allowed = LIVE_VM_STATES if live else OFFLINE_VM_STATES
    if vm.state not in allowed:
        raise InvalidState(
            f"Parameter volumeid: the VM {vm.name} of volume {vol.name} is {vm.state}; its disks move when it "
            f"is {' or '.join(allowed)}" + (" (the move was asked while it was Running)" if live else "")
        )


@dataclass(frozen=True)
class Unsuitable:
    """Why a pool cannot take a volume; `capacity` when it is only too small (CloudStack's 533)."""

    text: str
    capacity: bool = False


def why_not(session: Session, vol: Volume, vm: VirtualMachine | None, pool: StoragePool, live: bool) -> str | None:
    """Why the pool cannot take the volume (None when it can), in words."""
    found = unsuitable(session, vol, vm, pool, live)
    return found.text if found is not None else None


def unsuitable(
    session: Session, vol: Volume, vm: VirtualMachine | None, pool: StoragePool, live: bool
) -> Unsuitable | None:
    """The reasons findStoragePoolsForMigration gives, in the words migrateVolume answers with."""
    if pool.id == vol.pool_id:
        return Unsuitable(f"the volume is already on pool {pool.name}")
    if pool.zone_id != vol.zone_id:
        return Unsuitable(f"pool {pool.name} is in another zone than the volume")
    if pool.state != "Up":
        return Unsuitable(f"pool {pool.name} is {pool.state}")
    missing = missing_tags(session, vol, pool)
    if missing:
        return Unsuitable(f"pool {pool.name} lacks the disk offering's storage tag {', '.join(sorted(missing))}")
    host = session.get(Host, vm.host_id) if vm is not None and vm.host_id and live else None
    if host is not None and not reaches(host, pool):
        return Unsuitable(
            f"pool {pool.name} is not reachable from host {host.name}, where VM {vm.name if vm else ''} runs"
        )
    source = session.get(StoragePool, vol.pool_id) if vol.pool_id else None
    if not live and source is not None and not any(reaches(h, pool) and reaches(h, source) for h in up_hosts(session)):
        return Unsuitable(f"no Up host reaches both pool {source.name} and pool {pool.name}")
    need = bytes_needed(session, vol, pool)
    if Allocator(session, allocation_limits(session)).why_not(
        pool, DiskRequest(label=f"volume {vol.name}", size=need, pool_id=pool.id), None
    ):
        free = Allocator(session, allocation_limits(session)).free(pool)
        return Unsuitable(f"pool {pool.name} is too small: {max(0, free)} bytes free, the volume needs {need}", True)
    return None


def missing_tags(session: Session, vol: Volume, pool: StoragePool) -> set[str]:
    """The storage tags of the volume's disk offering that the pool lacks."""
    offering = session.get(DiskOffering, vol.disk_offering_id) if vol.disk_offering_id else None
    wanted = {t for t in ((offering.tags if offering else None) or "").split(",") if t}
    return wanted - {t for t in (pool.tags or "").split(",") if t}


def bytes_needed(session: Session, vol: Volume, pool: StoragePool) -> int:
    """What the volume takes on the pool once moved: its size, the template bases it adds there, and
    the rest of its snapshot tree (other branches' layers, the memory files of a root disk)."""
    return vol.size + _template_bytes(session, vol, pool) + tree_bytes(session, vol, pool.id)


def _template_bytes(session: Session, vol: Volume, pool: StoragePool) -> int:
    """The template bases the move would add to the pool (not cached there yet)."""
    rows = chain_rows(session, vol.top_layer_id)[1:]
    return sum(r.virtual_size for r in rows if r.kind == LAYER_TEMPLATE and pool_copy(session, r, pool.id) is None)


def check_capability(session: Session, vm: VirtualMachine) -> None:
    """The capability gate of a live move: the VM's host reports live storage motion and the admin has
    not turned storage motion off for its hypervisor (listHypervisorCapabilities' storagemotionenabled)."""
    host = session.get(Host, vm.host_id) if vm.host_id else None
    if host is None or host.removed is not None or host.status != "Up":
        state = host.status if host is not None else "gone"
        raise InvalidState(f"Parameter volumeid: the host of VM {vm.name} is {state}; a live move needs it Up")
    caps = DriverCapabilities.model_validate(host.capabilities) if host.capabilities else None
    if caps is None or not caps.live_storage_motion:
        raise InvalidParameter(
            f"Parameter livemigrate: host {host.name} cannot move the disk of running VM {vm.name}: its driver "
            "does not report live storage motion (storagemotionenabled is false); stop the VM to move it offline"
        )
    row = session.query(HypervisorCapability).filter_by(hypervisor=host.hypervisor, removed=None).first()
    if row is not None and not row.storage_motion_enabled:
        raise InvalidParameter(
            f"Parameter livemigrate: storage motion is disabled for hypervisor {host.hypervisor} "
            "(updateHypervisorCapabilities storagemotionenabled)"
        )


def check_move(session: Session, volume_id: str, pool_id: str, live: bool) -> Move:
    """Every rule of migrateVolume; raises the CloudError the API answers."""
    vol, pool = live_volume(session, volume_id), live_pool(session, pool_id)
    vm = vm_of(session, vol)
    check_volume(session, vol, vm, live)
    reason = unsuitable(session, vol, vm, pool, live)
    if reason is not None:
        text = f"Parameter storageid: {reason.text}"
        raise InsufficientCapacity(text) if reason.capacity else InvalidParameter(text)
    if live and vm is not None:
        check_capability(session, vm)
    return Move(vol, pool, vm, live)
