"""Types of the block-job and migration roles of the driver contract (their commands are declared in
`strato.protocol.messages`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from strato.protocol.declare import Message


class BlockJobKind(StrEnum):
    MIRROR = "mirror"
    STREAM = "stream"
    COMMIT = "commit"


class BlockJobReport(Message):
    """One block job of a running VM, as QEMU's query-jobs reports it."""

    job_id: str
    kind: BlockJobKind
    device_id: int
    status: Literal["created", "running", "paused", "ready", "standby", "waiting", "pending", "aborting",
                    "concluded", "null"]  # fmt: skip
    offset: int
    length: int
    speed_bytes_per_s: int = 0
    error: str | None = None


class BlockJobList(Message):
    jobs: list[BlockJobReport] = []


class NbdExport(Message):
    """A disk of an incoming VM exported over NBD so the source can mirror into it."""

    device_id: int
    uri: str
    """nbd://host:port/export-name (or nbd+unix:///name?socket=path)."""


class IncomingVm(Message):
    """An incoming VM prepared at the target: where to send the migration stream and the disks."""

    name: str
    migration_uri: str
    """tcp:host:port (or unix:path) the source migrates to."""
    exports: list[NbdExport] = []


class MigrationReport(Message):
    """A migration's progress at the source (query-migrate)."""

    name: str
    status: Literal["none", "setup", "active", "pre-switchover", "device", "postcopy-active", "completed",
                    "failed", "cancelling", "cancelled"]  # fmt: skip
    transferred_bytes: int = 0
    remaining_bytes: int = 0
    total_bytes: int = 0
    error: str | None = None
    downtime_ms: int | None = None
    """How long the guest was paused at the switch-over (QEMU's `downtime`), once completed."""
