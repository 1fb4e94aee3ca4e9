"""Templates and ISOs, and their copies on image stores (CloudStack's template_store_ref).

A template's copies on primary pools are not here: they are frozen layers (see storage.Layer).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity


class Template(Entity):
    __tablename__ = "templates"

    name: Mapped[str] = mapped_column(String(255), index=True)
    display_text: Mapped[str] = mapped_column(String(4096), default="")
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"))
    zone_id: Mapped[str | None] = mapped_column(ForeignKey("zones.id"), default=None)  # None: all zones
    format: Mapped[str] = mapped_column(String(16))  # QCOW2, RAW, ISO
    is_iso: Mapped[bool] = mapped_column(default=False)
    url: Mapped[str | None] = mapped_column(String(2048), default=None)
    checksum: Mapped[str | None] = mapped_column(String(255), default=None)
    os_type: Mapped[str] = mapped_column(String(255), default="Other Linux (64-bit)")
    hypervisor: Mapped[str] = mapped_column(String(32), default="KVM")
    is_public: Mapped[bool] = mapped_column(default=False)
    is_featured: Mapped[bool] = mapped_column(default=False)
    is_extractable: Mapped[bool] = mapped_column(default=False)
    bootable: Mapped[bool] = mapped_column(default=True)
    password_enabled: Mapped[bool] = mapped_column(default=False)
    template_type: Mapped[str] = mapped_column(String(32), default="USER")  # USER, BUILTIN, DATADISK
    # Data-disk templates are children of the root template, ordered by disk_index (1, 2, ...).
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("templates.id"), default=None, index=True)
    disk_index: Mapped[int] = mapped_column(Integer, default=0)
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    physical_size: Mapped[int] = mapped_column(BigInteger, default=0)
    # Allocated, Downloading, Ready, Error (aggregate of its copies; Ready once one copy is ready).
    state: Mapped[str] = mapped_column(String(32), default="Allocated")
    status_text: Mapped[str | None] = mapped_column(String(1024), default=None)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TemplateStoreCopy(Entity):
    """A template's file on an image store."""

    __tablename__ = "template_store_copies"

    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id"), index=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("image_stores.id"), index=True)
    path: Mapped[str] = mapped_column(String(1024))  # relative to the store's directory
    state: Mapped[str] = mapped_column(String(32), default="Downloading")  # Downloading, Ready, Error
    download_percent: Mapped[int] = mapped_column(Integer, default=0)
    physical_size: Mapped[int] = mapped_column(BigInteger, default=0)
    error_text: Mapped[str | None] = mapped_column(String(1024), default=None)
