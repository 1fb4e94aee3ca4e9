"""Virtual machines and SSH key pairs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity


class VirtualMachine(Entity):
    __tablename__ = "virtual_machines"

    name: Mapped[str] = mapped_column(String(255), index=True)
    display_name: Mapped[str] = mapped_column(String(255), default="")
    instance_name: Mapped[str] = mapped_column(String(255), unique=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"))
    zone_id: Mapped[str] = mapped_column(ForeignKey("zones.id"))
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), default=None, index=True)
    last_host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), default=None, index=True)
    service_offering_id: Mapped[str] = mapped_column(ForeignKey("service_offerings.id"))
    template_id: Mapped[str | None] = mapped_column(ForeignKey("templates.id"), default=None)
    iso_id: Mapped[str | None] = mapped_column(ForeignKey("templates.id"), default=None)
    state: Mapped[str] = mapped_column(String(16), default="Stopped")
    cpu_number: Mapped[int] = mapped_column(Integer, default=1)
    cpu_speed: Mapped[int] = mapped_column(Integer, default=1000)
    memory_mib: Mapped[int] = mapped_column(Integer, default=128)
    hypervisor: Mapped[str] = mapped_column(String(32), default="KVM")
    user_data: Mapped[str | None] = mapped_column(Text, default=None)
    keypair: Mapped[str | None] = mapped_column(String(255), default=None)
    public_key: Mapped[str | None] = mapped_column(Text, default=None)
    group: Mapped[str | None] = mapped_column(String(255), default=None)
    ha_enabled: Mapped[bool] = mapped_column(default=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # When it was destroyed: it is expunged expunge.delay seconds later unless recovered first.
    destroyed_at: Mapped[datetime | None] = mapped_column(default=None)
    # The VM snapshot its present state descends from (None: none, or not since the last revert to none).
    current_snapshot_id: Mapped[str | None] = mapped_column(String(36), default=None)


class SSHKeyPair(Entity):
    __tablename__ = "ssh_keypairs"

    name: Mapped[str] = mapped_column(String(255), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"))
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(255))


class ResourceLimit(Entity):
    """An account's or a domain's override of a default limit (max.account.* / max.domain.*); -1 is unlimited."""

    __tablename__ = "resource_limits"

    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), index=True, default=None)
    """None: the limit of the domain (its whole subtree)."""
    domain_id: Mapped[str | None] = mapped_column(ForeignKey("domains.id"), index=True, default=None)
    resource_type: Mapped[int] = mapped_column(Integer)  # CloudStack's: 0 VMs, 2 volumes, 10 primary storage
    max: Mapped[int] = mapped_column(Integer)
