"""`strato server`: runs one management server."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from strato.server.config import ServerConfig


def split_listen(listen: str, default_port: int) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host:
        return listen or "127.0.0.1", default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise typer.BadParameter(f"--listen must be HOST:PORT, not {listen}") from None


def server_command(
    data_dir: Path = typer.Option(..., "--data-dir", help="Directory for the database file and logs"),
    listen: str = typer.Option("127.0.0.1:8080", "--listen", help="HOST:PORT to serve the API on"),
    database_url: str | None = typer.Option(
        None,
        "--database-url",
        envvar="STRATO_DATABASE_URL",
        help="SQLAlchemy URL of the database (default: SQLite file in the data dir); postgresql://... for "
        "several servers sharing one database",
    ),
    admin_password: str = typer.Option(
        "password",
        "--admin-password",
        envvar="STRATO_ADMIN_PASSWORD",
        help="Password of the root admin created on first start",
    ),
    server_id: str | None = typer.Option(None, "--server-id", help="Stable name of this server among others"),
    workers: int = typer.Option(4, "--job-workers", help="Async jobs run at once by this server"),
    dead_after: float = typer.Option(
        15.0,
        "--dead-after",
        help="Seconds without heartbeat after which another server's running jobs are taken over "
        "(at least three heartbeats)",
    ),
    heartbeat_interval: float = typer.Option(
        2.0, "--heartbeat-interval", help="Seconds between two heartbeats of this server in the database"
    ),
) -> None:
    """Run the management server (CloudStack API on /client/api)."""
    from strato.server.run import run_server

    host, port = split_listen(listen, 8080)
    try:
        config = ServerConfig(
            data_dir=data_dir,
            host=host,
            port=port,
            database_url=database_url,
            admin_password=admin_password,
            server_id=server_id,
            job_workers=workers,
            dead_after=dead_after,
            heartbeat_interval=heartbeat_interval,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dead-after") from None
    run_server(config)


def default_home() -> Path:
    return Path(os.environ.get("STRATO_HOME", Path.home() / ".local" / "share" / "strato"))
