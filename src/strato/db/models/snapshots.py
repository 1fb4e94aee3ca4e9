"""Volume snapshots (CloudStack's snapshots): a flat copy of one volume's chain at one instant, kept on
an image store (secondary storage), and the policies that take them on a schedule.

A snapshot outlives its volume (as in CloudStack): it names the volume by id, and the volume's row stays
(removed) to tell its name and type.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity


class Snapshot(Entity):
    __tablename__ = "snapshots"

    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"))
    zone_id: Mapped[str] = mapped_column(ForeignKey("zones.id"))
    name: Mapped[str] = mapped_column(String(255), index=True)
    snapshot_type: Mapped[str] = mapped_column(String(16), default="MANUAL")  # MANUAL, RECURRING
    interval_type: Mapped[str] = mapped_column(String(16), default="MANUAL")  # MANUAL, HOURLY, DAILY...
    # Allocated, Creating, BackingUp, BackedUp, Error (Destroyed once deleted: removed is set then).
    state: Mapped[str] = mapped_column(String(16), default="Allocated")
    store_id: Mapped[str | None] = mapped_column(ForeignKey("image_stores.id"), default=None)
    path: Mapped[str | None] = mapped_column(String(1024), default=None)  # relative to the store
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    physical_size: Mapped[int] = mapped_column(BigInteger, default=0)
    policy_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)


class SnapshotPolicy(Entity):
    """Recurring snapshots of one volume (createSnapshotPolicy): at most one policy per interval type."""

    __tablename__ = "snapshot_policies"

    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    interval_type: Mapped[str] = mapped_column(String(16))  # HOURLY, DAILY, WEEKLY, MONTHLY
    schedule: Mapped[str] = mapped_column(String(32))  # "MM", "MM:HH", "MM:HH:DD"
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    max_snaps: Mapped[int] = mapped_column(Integer, default=8)
    next_run: Mapped[datetime] = mapped_column()
    """When the policy fires next (UTC): computed from the schedule in its time zone after each run."""
