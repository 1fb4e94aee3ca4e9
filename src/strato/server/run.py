"""Runs the management server under uvicorn."""

from __future__ import annotations

import uvicorn

from strato.server.app import MAX_BODY, MAX_QUERY, create_app
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
        # Far above the app's MAX_QUERY (h11's default is 16 KB, beyond which it resets the connection):
        # a GET of up to about a megabyte gets the app's 431 envelope; h11 buffers at most this much.
        h11_max_incomplete_event_size=MAX_BODY + MAX_QUERY,
    )
