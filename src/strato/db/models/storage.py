"""Volumes and the layers (qcow2 files) their data is made of.

A volume's data is a chain of layers on one pool; only the top layer changes. A template's copy on a
pool is a frozen layer shared by every linked clone made from it there.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity

LAYER_TEMPLATE = "template"  # a template's base layer cached on a pool
LAYER_VOLUME = "volume"  # a volume's layer (the top one is writable)
LAYER_CONFIG_DRIVE = "configdrive"  # a VM's config drive ISO, beside its root disk


class Layer(Entity):
    __tablename__ = "layers"
    # One live layer per file: concurrent jobs that would create the same file collide here.
    __table_args__ = (
        Index(
            "uq_layers_live_file",
            "pool_id",
            "path",
            unique=True,
            sqlite_where=text("removed IS NULL"),
            postgresql_where=text("removed IS NULL"),
        ),
    )

    pool_id: Mapped[str] = mapped_column(ForeignKey("storage_pools.id"), index=True)
    path: Mapped[str] = mapped_column(String(1024))  # relative to the pool's directory
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("layers.id"), default=None, index=True)
    kind: Mapped[str] = mapped_column(String(16), default=LAYER_VOLUME)
    frozen: Mapped[bool] = mapped_column(default=False)
    template_id: Mapped[str | None] = mapped_column(ForeignKey("templates.id"), default=None, index=True)
    volume_id: Mapped[str | None] = mapped_column(ForeignKey("volumes.id"), default=None, index=True)
    vm_id: Mapped[str | None] = mapped_column(String(36), default=None)
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    physical_size: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16), default="Creating")  # Creating, Ready, Error
    # The job making it while Creating: after a crash, that job's recovery removes what it began.
    creating_job: Mapped[str | None] = mapped_column(String(36), default=None, index=True)


class Volume(Entity):
    __tablename__ = "volumes"

    name: Mapped[str] = mapped_column(String(255), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"))
    zone_id: Mapped[str] = mapped_column(ForeignKey("zones.id"))
    pool_id: Mapped[str | None] = mapped_column(ForeignKey("storage_pools.id"), default=None, index=True)
    # No foreign key: layers point at volumes, and a cycle of constraints would complicate migrations.
    top_layer_id: Mapped[str | None] = mapped_column(String(36), default=None)
    vm_id: Mapped[str | None] = mapped_column(ForeignKey("virtual_machines.id"), default=None, index=True)
    device_id: Mapped[int | None] = mapped_column(Integer, default=None)
    volume_type: Mapped[str] = mapped_column(String(16), default="DATADISK")  # ROOT, DATADISK
    size: Mapped[int] = mapped_column(BigInteger, default=0)  # virtual bytes
    disk_offering_id: Mapped[str | None] = mapped_column(ForeignKey("disk_offerings.id"), default=None)
    template_id: Mapped[str | None] = mapped_column(ForeignKey("templates.id"), default=None)
    state: Mapped[str] = mapped_column(String(16), default="Allocated")
    provisioning_type: Mapped[str] = mapped_column(String(16), default="thin")
    attached: Mapped[datetime | None] = mapped_column(default=None)
    # The pool the owner asked for (None: the allocator chose); kept to explain placement.
    requested_pool_id: Mapped[str | None] = mapped_column(String(36), default=None)
