"""Usage events of VM snapshots (CloudStack's usage type 25): one when a snapshot is Ready, with the
bytes its layers and memory file hold, and one when its owner deletes it or its VM is expunged."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from strato.db.models import Layer, VirtualMachine, VMSnapshot, VMSnapshotDisk
from strato.services.core import usage


def record_created(session: Session, vm: VirtualMachine, snap: VMSnapshot) -> None:
    layers = (
        select(func.coalesce(func.sum(Layer.physical_size), 0), func.coalesce(func.sum(Layer.virtual_size), 0))
        .join(VMSnapshotDisk, VMSnapshotDisk.layer_id == Layer.id)
        .where(VMSnapshotDisk.snapshot_id == snap.id, VMSnapshotDisk.removed.is_(None))
    )
    size, virtual = session.execute(layers).one()
    memory = session.get(Layer, snap.memory_layer_id) if snap.memory_layer_id else None
    usage.record(
        session, usage.VM_SNAPSHOT.start_event, account_id=snap.account_id, domain_id=snap.domain_id,
        resource_id=snap.id, name=snap.display_name or snap.name, zone_id=vm.zone_id, vm_id=vm.id,
        size=int(size) + (memory.physical_size if memory else 0), virtual_size=int(virtual),
    )  # fmt: skip


def record_deleted(session: Session, snap: VMSnapshot) -> None:
    usage.record(
        session, usage.VM_SNAPSHOT.end_event, account_id=snap.account_id, domain_id=snap.domain_id,
        resource_id=snap.id, name=snap.display_name or snap.name, vm_id=snap.vm_id,
    )  # fmt: skip
