"""A volume's VM snapshot tree as a move sees it: the layers off its present chain and the memory files.

A disk with VM snapshots is a tree of layers, not a chain: reverting put a new top on an older frozen
layer, and the branch left behind stays while a snapshot (hidden ones included) holds it. A move takes the
whole tree, so every snapshot still reverts on the new pool, and the memory-state files of the VM's
DiskAndMemory snapshots go with its root disk. The database points the snapshots at the copies in the
move's commit step (`repoint`), never before.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Layer, VMSnapshot, VMSnapshotDisk, Volume
from strato.db.models.storage import LAYER_TEMPLATE, LAYER_VOLUME
from strato.db.models.vmsnapshots import LAYER_MEMORY


def _chain_ids(session: Session, top_layer_id: str | None) -> set[str]:
    out: set[str] = set()
    current = session.get(Layer, top_layer_id) if top_layer_id else None
    while current is not None and current.id not in out:
        out.add(current.id)
        current = session.get(Layer, current.parent_id) if current.parent_id else None
    return out


def branch_rows(session: Session, volume: Volume) -> list[Layer]:
    """The volume's frozen layers off its present chain (the other branches of its snapshot tree), each
    after its parent; a branch's template base that the chain does not hold comes before its layers."""
    on_chain = _chain_ids(session, volume.top_layer_id)
    q = select(Layer).where(Layer.volume_id == volume.id, Layer.kind == LAYER_VOLUME, Layer.removed.is_(None),
                            Layer.state == "Ready")  # fmt: skip
    others = {r.id: r for r in session.scalars(q.order_by(Layer.created)) if r.id not in on_chain}
    ordered: list[Layer] = []
    placed = set(on_chain)

    def place(row: Layer) -> None:
        if row.id in placed:
            return
        placed.add(row.id)
        parent = session.get(Layer, row.parent_id) if row.parent_id else None
        if parent is not None and (parent.id in others or parent.kind == LAYER_TEMPLATE):
            place(parent)
        ordered.append(row)

    for row in others.values():
        place(row)
    return ordered


def memory_rows(session: Session, volume: Volume) -> list[Layer]:
    """The VM's memory-state files beside this volume, when it is the VM's root disk."""
    if volume.volume_type != "ROOT" or not volume.vm_id or not volume.pool_id:
        return []
    q = select(Layer).where(Layer.vm_id == volume.vm_id, Layer.kind == LAYER_MEMORY, Layer.removed.is_(None),
                            Layer.state == "Ready", Layer.pool_id == volume.pool_id)  # fmt: skip
    return list(session.scalars(q.order_by(Layer.created)))


def tree_bytes(session: Session, volume: Volume, pool_id: str) -> int:
    """What the tree adds to a move beyond the present chain: the branches' layers (a template base
    already cached on the pool aside) and the memory files, by their physical size."""
    rows = [r for r in branch_rows(session, volume) if not (r.kind == LAYER_TEMPLATE and _cached(session, r, pool_id))]
    return sum(r.physical_size for r in rows) + sum(r.physical_size for r in memory_rows(session, volume))


def _cached(session: Session, layer: Layer, pool_id: str) -> bool:
    q = select(Layer.id).where(Layer.pool_id == pool_id, Layer.path == layer.path, Layer.state == "Ready",
                               Layer.removed.is_(None))  # fmt: skip
    return layer.pool_id == pool_id or session.scalar(q) is not None


def repoint(session: Session, volume_id: str, mapping: dict[str, str]) -> None:
    """The commit of a tree's move: each snapshot of the volume holds the copy of its frozen layer, and
    each memory file moved is the copy."""
    held = select(VMSnapshotDisk).where(VMSnapshotDisk.volume_id == volume_id, VMSnapshotDisk.removed.is_(None))
    for disk in session.scalars(held):
        disk.layer_id = mapping.get(disk.layer_id, disk.layer_id)
    moved = [old for old in mapping if old != mapping[old]]
    if moved:
        for snap in session.scalars(select(VMSnapshot).where(VMSnapshot.memory_layer_id.in_(moved))):
            assert snap.memory_layer_id is not None
            snap.memory_layer_id = mapping[snap.memory_layer_id]
