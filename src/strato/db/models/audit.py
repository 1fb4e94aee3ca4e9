"""Audit events and resource tags."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity


class Event(Entity):
    """One state-changing call or system change: who, what, when, result."""

    __tablename__ = "events"

    type: Mapped[str] = mapped_column(String(64), index=True)
    level: Mapped[str] = mapped_column(String(16), default="INFO")
    state: Mapped[str] = mapped_column(String(16), default="Completed")
    description: Mapped[str] = mapped_column(String(4096), default="")
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), default=None, index=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), default=None)
    domain_id: Mapped[str | None] = mapped_column(ForeignKey("domains.id"), default=None)
    resource_type: Mapped[str | None] = mapped_column(String(64), default=None)
    resource_id: Mapped[str | None] = mapped_column(String(36), default=None)


class ResourceTag(Entity):
    __tablename__ = "resource_tags"

    key: Mapped[str] = mapped_column(String(255), index=True)
    value: Mapped[str] = mapped_column(String(255))
    resource_type: Mapped[str] = mapped_column(String(64), index=True)
    resource_id: Mapped[str] = mapped_column(String(36), index=True)
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), default=None)
    domain_id: Mapped[str | None] = mapped_column(ForeignKey("domains.id"), default=None)
