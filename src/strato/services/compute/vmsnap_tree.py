"""The VM snapshot tree as the database keeps it: lookups, children, the rules shared by the snapshot
operations, and the agent calls they share (run outside database sessions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.engine import Database
from strato.db.models import Host, Layer, StoragePool, VirtualMachine, VMSnapshot, VMSnapshotDisk, Volume
from strato.db.models.storage import LAYER_VOLUME
from strato.db.models.vmsnapshots import LAYER_MEMORY
from strato.errors import CloudError, ErrorCode, InvalidParameter, NotFound, UnsupportedAction
from strato.protocol.client import AgentClient
from strato.protocol.messages import LayerRef
from strato.services.compute import vmsnap_usage
from strato.services.core import settings
from strato.services.core.access import owner_scope
from strato.services.core.agents import host_client
from strato.services.core.listing import Page, run_page
from strato.services.core.reach import host_for
from strato.services.core.tags import tagged
from strato.services.storage.disks import attached_volumes
from strato.services.storage.layers import ref, remove_layer_file

VM_SNAPSHOT_RESULT = "vmsnapshot"
LIVE_STATES = ("Allocated", "Creating", "Ready", "Reverting", "Expunging", "Error")


class VmSnapshotMaxReached(CloudError):
    """CloudStack answers vmsnapshot.max with a CloudRuntimeException (530)."""

    code = ErrorCode.INTERNAL_ERROR


def load_snapshot(session: Session, snapshot_id: str) -> VMSnapshot:
    snap = session.get(VMSnapshot, snapshot_id)
    if snap is None or snap.removed is not None:
        raise NotFound(f"Unable to find VM snapshot with id {snapshot_id}")
    return snap


def live_children(session: Session, snapshot_id: str) -> list[VMSnapshot]:
    """The snapshots taken from this one (hidden ones included: their layers still rest on it)."""
    q = select(VMSnapshot).where(VMSnapshot.parent_id == snapshot_id, VMSnapshot.removed.is_(None))
    return list(session.scalars(q.order_by(VMSnapshot.created)))


def child_count(session: Session, snap: VMSnapshot) -> int:
    """Tree children, counting the VM's present state when it descends directly from the snapshot."""
    vm = session.get(VirtualMachine, snap.vm_id)
    here = 1 if vm is not None and vm.current_snapshot_id == snap.id else 0
    return len(live_children(session, snap.id)) + here


def snapshot_disks(session: Session, snapshot_id: str) -> list[VMSnapshotDisk]:
    q = select(VMSnapshotDisk).where(VMSnapshotDisk.snapshot_id == snapshot_id, VMSnapshotDisk.removed.is_(None))
    return list(session.scalars(q.order_by(VMSnapshotDisk.device_id)))


def vm_snapshot_count(session: Session, vm_id: str) -> int:
    """The VM's snapshots as the user sees them (hidden ones and failed ones are not counted)."""
    q = select(func.count()).select_from(VMSnapshot).where(
        VMSnapshot.vm_id == vm_id, VMSnapshot.removed.is_(None), VMSnapshot.hidden.is_(False),
        VMSnapshot.state != "Error",
    )  # fmt: skip
    return int(session.scalar(q) or 0)


def require_enabled(session: Session, vm: VirtualMachine, memory: bool = False) -> None:
    """listHypervisorCapabilities' vmsnapshotenabled (the hosts' drivers and the administrator)."""
    if not settings.vm_snapshots_enabled(session, vm.hypervisor):
        raise UnsupportedAction(f"VM snapshots are not enabled for hypervisor {vm.hypervisor}")
    if memory and not settings.cloud_features(session, vm.hypervisor).memory_snapshots:
        raise UnsupportedAction(f"Memory snapshots are not supported by the {vm.hypervisor} hosts")


def max_per_vm(session: Session) -> int:
    return int(settings.get(session, "vmsnapshot.max"))


def check_max(session: Session, vm: VirtualMachine, exclude: str | None = None) -> None:
    q = select(func.count()).select_from(VMSnapshot).where(
        VMSnapshot.vm_id == vm.id, VMSnapshot.removed.is_(None), VMSnapshot.hidden.is_(False),
        VMSnapshot.state != "Error", VMSnapshot.id != (exclude or ""),
    )  # fmt: skip
    count, cap = int(session.scalar(q) or 0), max_per_vm(session)
    if count >= cap:
        raise VmSnapshotMaxReached(
            f"Creating vm snapshot failed due to a VM can just have : {cap} VM snapshots. Please delete old ones"
        )


def refuse_on_layerless(session: Session, vm: VirtualMachine) -> list[Volume]:
    vols = [v for v in attached_volumes(session, vm.id) if v.top_layer_id]
    if not vols:
        raise InvalidParameter(f"VM {vm.name} has no disk to snapshot")
    for v in vols:
        if v.state != "Ready":
            raise InvalidParameter(f"Volume {v.name} of VM {vm.name} is {v.state}; its VM cannot be snapshotted now")
    return vols


def layer_ref(session: Session, layer_id: str) -> LayerRef:
    layer = session.get(Layer, layer_id)
    assert layer is not None
    pool = session.get(StoragePool, layer.pool_id)
    assert pool is not None
    return ref(pool, layer.path)


def pools_client(session: Session, layer_ids: list[str], prefer: str | None = None) -> tuple[AgentClient, str]:
    """A host reaching the pools of the layers (the VM's host first)."""
    pools = {}
    for lid in layer_ids:
        layer = session.get(Layer, lid)
        assert layer is not None
        pool = session.get(StoragePool, layer.pool_id)
        assert pool is not None
        pools[pool.id] = pool
    host = host_for(session, list(pools.values()), prefer=prefer)
    return host_client(host), host.name


def vm_host(session: Session, vm: VirtualMachine) -> Host | None:
    return session.get(Host, vm.host_id) if vm.host_id and vm.state == "Running" else None


def running_chain(session: Session, vm: VirtualMachine) -> set[str]:
    """The layer ids every disk of the running VM has open (empty when it does not run)."""
    if vm.state != "Running":
        return set()
    out: set[str] = set()
    for vol in attached_volumes(session, vm.id):
        current = session.get(Layer, vol.top_layer_id) if vol.top_layer_id else None
        while current is not None:
            out.add(current.id)
            current = session.get(Layer, current.parent_id) if current.parent_id else None
    return out


def held_by_snapshot(session: Session, layer_id: str) -> bool:
    q = select(VMSnapshotDisk.id).where(VMSnapshotDisk.layer_id == layer_id, VMSnapshotDisk.removed.is_(None))
    return session.scalar(q) is not None


def new_layer_row(session: Session, volume: Volume, pool_id: str, parent_id: str | None, job_id: str,
                  kind: str = LAYER_VOLUME, path: str | None = None, size: int = 0) -> Layer:  # fmt: skip
    """A Creating layer row marked with its job (the step's undo removes it and its file)."""
    layer = Layer(pool_id=pool_id, path="", volume_id=volume.id, kind=kind, parent_id=parent_id,
                  virtual_size=size or volume.size, state="Creating", creating_job=job_id)  # fmt: skip
    session.add(layer)
    session.flush()
    layer.path = path or f"volumes/{volume.id}/{layer.id}.qcow2"
    return layer


def list_snapshots(ctx: Any, args: dict[str, Any], page: Page) -> tuple[list[VMSnapshot], int]:
    """listVMSnapshot: the caller's visible snapshots (hidden ones never), filtered and paged."""
    q = select(VMSnapshot).where(
        VMSnapshot.removed.is_(None),
        VMSnapshot.hidden.is_(False),
        owner_scope(ctx, args).condition(VMSnapshot.account_id),
    )
    for param, col in (("virtualmachineid", VMSnapshot.vm_id), ("vmsnapshotid", VMSnapshot.id),
                       ("name", VMSnapshot.name)):  # fmt: skip
        if args.get(param):
            q = q.where(col == args[param])
    if args.get("state"):
        q = q.where(VMSnapshot.state == args["state"])
    q = q.where(*tagged(VMSnapshot.id, args.get("tags")))
    return run_page(
        ctx.session, q, page, (VMSnapshot.name, VMSnapshot.display_name), (VMSnapshot.created, VMSnapshot.id)
    )


def visible_parent(
    session: Session, snap: VMSnapshot, get: Callable[[str], VMSnapshot | None] | None = None
) -> VMSnapshot | None:
    """The nearest ancestor the API shows (hidden nodes are skipped, as if merged away); `get` looks a
    snapshot up by id (a list page's preloaded rows), session.get by default."""
    look = get or (lambda snap_id: session.get(VMSnapshot, snap_id))
    parent = look(snap.parent_id) if snap.parent_id else None
    while parent is not None and parent.hidden:
        parent = look(parent.parent_id) if parent.parent_id else None
    return parent


def forget_vm_snapshots(db: Database, vm_id: str) -> bool:
    """Expunge: the VM's snapshots leave the tree and their memory files go; answers whether it had any
    (then its volumes' layers of every branch are removed, not only the present chain). Idempotent."""
    with db.session() as s:
        snaps = list(s.scalars(select(VMSnapshot).where(VMSnapshot.vm_id == vm_id)))
        memory = list(s.scalars(select(Layer.id).where(Layer.vm_id == vm_id, Layer.kind == LAYER_MEMORY,
                                                       Layer.removed.is_(None))))  # fmt: skip
        vm = s.get(VirtualMachine, vm_id)
        if vm is not None:
            vm.current_snapshot_id = None
        for snap in snaps:
            for d in snapshot_disks(s, snap.id):
                d.removed = utcnow()
            if snap.removed is None:
                vmsnap_usage.record_deleted(s, snap)
                snap.removed, snap.state = utcnow(), "Expunging"
    for lid in memory:
        remove_layer_file(db, lid)
    return bool(snaps)


def remove_branch_layers(db: Database, volume_id: str) -> None:
    """A volume kept after its VM's snapshots went (a data disk): the layers of other branches than its
    present chain are removed, newest first."""
    with db.session() as s:
        vol = s.get(Volume, volume_id)
        if vol is None:
            return
        keep: set[str] = set()
        current = s.get(Layer, vol.top_layer_id) if vol.top_layer_id else None
        while current is not None:
            keep.add(current.id)
            current = s.get(Layer, current.parent_id) if current.parent_id else None
        q = select(Layer.id).where(Layer.volume_id == volume_id, Layer.removed.is_(None), Layer.kind == LAYER_VOLUME)
        ids = [lid for lid in s.scalars(q.order_by(Layer.created.desc())) if lid not in keep]
    for lid in ids:
        remove_layer_file(db, lid)
