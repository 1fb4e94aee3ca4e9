"""Global settings and per-hypervisor capabilities."""

from __future__ import annotations

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Base, Entity


class Setting(Base):
    """An override of a declared configuration value; defaults live in code, not rows."""

    __tablename__ = "settings"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str | None] = mapped_column(String(4096), default=None)


class HypervisorCapability(Entity):
    __tablename__ = "hypervisor_capabilities"

    hypervisor: Mapped[str] = mapped_column(String(32))
    hypervisor_version: Mapped[str] = mapped_column(String(32), default="default")
    max_guests_limit: Mapped[int] = mapped_column(Integer, default=50)
    max_data_volumes_limit: Mapped[int] = mapped_column(Integer, default=6)
    max_hosts_per_cluster: Mapped[int | None] = mapped_column(Integer, default=None)
    storage_motion_enabled: Mapped[bool] = mapped_column(default=True)
    vm_snapshot_enabled: Mapped[bool] = mapped_column(default=True)
    security_group_enabled: Mapped[bool] = mapped_column(default=True)
