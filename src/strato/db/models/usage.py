"""Usage: what an account held and for how long, for billing (CloudStack's usage events and records).

Events are written in the same transaction as the change they record (a VM snapshot made Ready, one
deleted), so no change is billed that did not happen and none is missed. Records are derived from the
events by `generateUsageRecords`, one per resource per aggregation period, and can be made again."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity


class UsageEvent(Entity):
    __tablename__ = "usage_events"

    type: Mapped[str] = mapped_column(String(64), index=True)  # e.g. VMSNAPSHOT.CREATE
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"))
    zone_id: Mapped[str | None] = mapped_column(String(36), default=None)
    resource_id: Mapped[str] = mapped_column(String(36), index=True)
    resource_name: Mapped[str] = mapped_column(String(255), default="")
    vm_id: Mapped[str | None] = mapped_column(String(36), default=None)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageRecord(Entity):
    """One resource's use over one aggregation period (or the part of it the resource existed)."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_period", "period_start", "usage_type"),)

    usage_type: Mapped[int] = mapped_column(Integer)  # CloudStack's usage type, e.g. 25 VM_SNAPSHOT
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"))
    zone_id: Mapped[str | None] = mapped_column(String(36), default=None)
    usage_id: Mapped[str] = mapped_column(String(36), index=True)  # the resource billed
    name: Mapped[str] = mapped_column(String(255), default="")
    vm_id: Mapped[str | None] = mapped_column(String(36), default=None)
    description: Mapped[str] = mapped_column(String(1024), default="")
    raw_usage: Mapped[float] = mapped_column(Float, default=0.0)  # hours
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    period_start: Mapped[datetime] = mapped_column()
    period_end: Mapped[datetime] = mapped_column()
