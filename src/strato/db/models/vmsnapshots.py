"""VM snapshots: a tree per VM, each node holding one frozen layer per disk (and maybe a memory file).

The tree lives here, not in the files: `parent` is the snapshot the node was taken from (the VM's
current snapshot at that time), and the VM's `current_snapshot_id` is the node its present state
descends from. A deleted node that still has several children stays as a hidden row until one is left.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity

LAYER_MEMORY = "memory"  # a VM snapshot's memory-state file, beside the root disk


class VMSnapshot(Entity):
    __tablename__ = "vm_snapshots"

    vm_id: Mapped[str] = mapped_column(ForeignKey("virtual_machines.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"))
    name: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str | None] = mapped_column(Text, default=None)
    snapshot_type: Mapped[str] = mapped_column(String(16), default="Disk")  # Disk, DiskAndMemory
    state: Mapped[str] = mapped_column(String(16), default="Allocated")
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("vm_snapshots.id"), default=None, index=True)
    hidden: Mapped[bool] = mapped_column(default=False)
    """Deleted by its owner while its layers still serve several children."""
    memory_layer_id: Mapped[str | None] = mapped_column(String(36), default=None)
    """The memory-state file (a layer row of kind memory on the root disk's pool)."""


class VMSnapshotDisk(Entity):
    """One disk of a snapshot: the volume and the frozen layer of its chain that holds the instant."""

    __tablename__ = "vm_snapshot_disks"

    snapshot_id: Mapped[str] = mapped_column(ForeignKey("vm_snapshots.id"), index=True)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"), index=True)
    device_id: Mapped[int] = mapped_column(Integer, default=0)
    layer_id: Mapped[str] = mapped_column(ForeignKey("layers.id"), index=True)
