"""Settings of one management server process."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from strato.db.engine import sqlite_url

MISSED_HEARTBEATS = 3
"""Heartbeats a server may miss before the others take it for dead."""


@dataclass
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = None
    admin_password: str = "password"
    server_id: str | None = None
    job_workers: int = 4
    job_poll_interval: float = 0.5
    heartbeat_interval: float = 2.0
    dead_after: float = 15.0
    monitor: bool = True

    def __post_init__(self) -> None:
        # A server starved of CPU misses a heartbeat or two; taking it for dead then hands its running
        # jobs to another server while it still runs them.
        if self.heartbeat_interval <= 0:
            raise ValueError(f"the heartbeat interval must be positive, not {self.heartbeat_interval:g} s")
        if self.dead_after < MISSED_HEARTBEATS * self.heartbeat_interval:
            raise ValueError(
                f"--dead-after {self.dead_after:g} s is under {MISSED_HEARTBEATS} heartbeats of "
                f"{self.heartbeat_interval:g} s: a busy server would be taken for dead"
            )

    @property
    def db_url(self) -> str:
        return self.database_url or os.environ.get("STRATO_DATABASE_URL") or sqlite_url(self.data_dir)

    @property
    def node_id(self) -> str:
        """Stable across restarts, so a restarted server recognises the jobs it left running."""
        return self.server_id or f"{socket.gethostname()}:{self.port}:{self.data_dir.resolve()}"
