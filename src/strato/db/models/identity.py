"""Domains, accounts, users and login sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Base, Entity, utcnow

ACCOUNT_TYPE_USER = 0
ACCOUNT_TYPE_ADMIN = 1
ACCOUNT_TYPE_DOMAIN_ADMIN = 2


class Domain(Entity):
    __tablename__ = "domains"

    name: Mapped[str] = mapped_column(String(255))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("domains.id"), default=None)
    # Full path such as "ROOT/sales/emea": subtree queries are prefix matches on it.
    path: Mapped[str] = mapped_column(String(1024), index=True)
    level: Mapped[int] = mapped_column(Integer, default=0)
    network_domain: Mapped[str | None] = mapped_column(String(255), default=None)


class Account(Entity):
    __tablename__ = "accounts"

    name: Mapped[str] = mapped_column(String(255), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"), index=True)
    type: Mapped[int] = mapped_column(Integer, default=ACCOUNT_TYPE_USER)
    state: Mapped[str] = mapped_column(String(32), default="enabled")
    network_domain: Mapped[str | None] = mapped_column(String(255), default=None)


class User(Entity):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("api_key"),)

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    username: Mapped[str] = mapped_column(String(255), index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    firstname: Mapped[str] = mapped_column(String(255), default="")
    lastname: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str | None] = mapped_column(String(255), default=None)
    timezone: Mapped[str | None] = mapped_column(String(64), default=None)
    api_key: Mapped[str | None] = mapped_column(String(255), default=None)
    secret_key: Mapped[str | None] = mapped_column(String(255), default=None)
    state: Mapped[str] = mapped_column(String(32), default="enabled")  # enabled, disabled, locked, removed
    # Failed logins since the last good one: at incorrect.login.attempts.allowed the user is locked.
    login_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class LoginSession(Base):
    __tablename__ = "login_sessions"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The JSESSIONID cookie: a request needs it and the key together, so a key seen in a URL or a log
    # is not enough to act as the user.
    cookie: Mapped[str | None] = mapped_column(String(64), default=None)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_used: Mapped[datetime] = mapped_column(default=utcnow)
