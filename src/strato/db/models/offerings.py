"""Service offerings (compute) and disk offerings, with the storage tags that place disks."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity


class ServiceOffering(Entity):
    __tablename__ = "service_offerings"

    name: Mapped[str] = mapped_column(String(255), index=True)
    display_text: Mapped[str] = mapped_column(String(4096), default="")
    cpu_number: Mapped[int | None] = mapped_column(Integer, default=None)
    cpu_speed: Mapped[int | None] = mapped_column(Integer, default=None)
    memory_mib: Mapped[int | None] = mapped_column(Integer, default=None)
    storage_type: Mapped[str] = mapped_column(String(16), default="shared")
    tags: Mapped[str | None] = mapped_column(String(1024), default=None)
    host_tags: Mapped[str | None] = mapped_column(String(1024), default=None)
    offer_ha: Mapped[bool] = mapped_column(default=False)
    limit_cpu_use: Mapped[bool] = mapped_column(default=False)
    is_system: Mapped[bool] = mapped_column(default=False)
    root_disk_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    domain_id: Mapped[str | None] = mapped_column(ForeignKey("domains.id"), default=None)
    state: Mapped[str] = mapped_column(String(16), default="Active")


class DiskOffering(Entity):
    __tablename__ = "disk_offerings"

    name: Mapped[str] = mapped_column(String(255), index=True)
    display_text: Mapped[str] = mapped_column(String(4096), default="")
    disk_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    customized: Mapped[bool] = mapped_column(default=False)
    min_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    tags: Mapped[str | None] = mapped_column(String(1024), default=None)
    storage_type: Mapped[str] = mapped_column(String(16), default="shared")
    provisioning_type: Mapped[str] = mapped_column(String(16), default="thin")
    domain_id: Mapped[str | None] = mapped_column(ForeignKey("domains.id"), default=None)
    state: Mapped[str] = mapped_column(String(16), default="Active")
