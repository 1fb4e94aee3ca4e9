"""Async jobs, the resources each one locks, and the servers that run them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Base, new_id, utcnow

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_SUCCEEDED = "succeeded"
JOB_FAILED = "failed"
JOB_CANCELLED = "cancelled"
JOB_ACTIVE = (JOB_QUEUED, JOB_RUNNING)


class Job(Base):
    __tablename__ = "jobs"

    # Submission order: jobs on a shared resource run in increasing seq.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(64))
    cmd: Mapped[str] = mapped_column(String(255))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JOB_QUEUED, index=True)
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), default=None, index=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), default=None)
    instance_type: Mapped[str | None] = mapped_column(String(64), default=None)
    instance_id: Mapped[str | None] = mapped_column(String(36), default=None)
    result_code: Mapped[int] = mapped_column(Integer, default=0)
    # On success: {"type": <object name>, "id": <resource id>} or {"success": true, ...};
    # on failure: {"errorcode": .., "errortext": ..}.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    # Strato: {"parts": [{"name", "done", "total", ...ids}], "phase": text}; the parts add up to the totals.
    progress_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    proc_status: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    owner: Mapped[str | None] = mapped_column(String(255), default=None, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    started: Mapped[datetime | None] = mapped_column(default=None)
    completed: Mapped[datetime | None] = mapped_column(default=None)


class JobResource(Base):
    __tablename__ = "job_resources"

    job_seq: Mapped[int] = mapped_column(ForeignKey("jobs.seq"), primary_key=True)
    resource: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class ServerNode(Base):
    """A running management server: its heartbeat tells the others whether its jobs are orphaned."""

    __tablename__ = "server_nodes"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    incarnation: Mapped[str] = mapped_column(String(36), default=new_id)
    started: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat: Mapped[datetime] = mapped_column(default=utcnow)
