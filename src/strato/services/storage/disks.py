"""A VM's disks as the agent sees them: its attached volumes in device order, each as its top layer."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Layer, StoragePool, Volume
from strato.protocol.messages import DiskSpec, LayerRef
from strato.services.core.reach import pool_ref


def attached_volumes(session: Session, vm_id: str) -> list[Volume]:
    """A VM's live volumes in device order, the order its disks appear to the guest."""
    return list(
        session.scalars(
            select(Volume).where(Volume.vm_id == vm_id, Volume.removed.is_(None)).order_by(Volume.device_id)
        )
    )


def disk_spec(session: Session, volume: Volume) -> DiskSpec:
    """A volume as the agent attaches it: its top layer, device id and a serial the guest can see."""
    assert volume.top_layer_id and volume.pool_id and volume.device_id is not None
    top = session.get(Layer, volume.top_layer_id)
    pool = session.get(StoragePool, volume.pool_id)
    assert top is not None and pool is not None
    return DiskSpec(
        device_id=volume.device_id,
        layer=LayerRef(pool=pool_ref(pool), name=top.path),
        serial=volume.id.replace("-", "")[:20],
    )
