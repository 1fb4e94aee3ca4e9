"""Runs the management server under uvicorn."""

from __future__ import annotations

import uvicorn

from strato.server.app import create_app
from strato.server.config import ServerConfig
from strato.server.logs import setup_logging


def run_server(config: ServerConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(config.data_dir / "server.log")
    app = create_app(config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        # Clients pool connections (cs through requests, which has no idle expiry): a long keep-alive
        # keeps the server from closing a connection just as a client reuses it.
        timeout_keep_alive=75,
    )
