"""The browser's console websocket (`/client/console/websocket?token=...`): a token of
createConsoleEndpoint opens a relay to the VM's agent (`/v1/console`), which relays to QEMU's VNC.

Refusals close the socket before accepting it (the browser sees the handshake fail): an unknown or
expired token, a VM no longer running, an agent that will not relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from strato.db.engine import Database
from strato.services.compute import console

log = logging.getLogger("strato.server.console")

POLICY_VIOLATION = 1008
TRY_AGAIN = 1013


def _agent_ws_url(agent_url: str, instance_name: str) -> str:
    base = agent_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return f"{base}/v1/console?vm={instance_name}"


async def console_websocket(websocket: WebSocket, db: Database) -> None:
    token = websocket.query_params.get("token", "")

    def lookup() -> console.ConsoleTarget | None:
        with db.session() as s:
            return console.redeem(s, token)

    target = await run_in_threadpool(lookup) if token else None
    if target is None:
        await websocket.close(code=POLICY_VIOLATION, reason="invalid or expired console token")
        return
    url = _agent_ws_url(target.agent_url, target.instance_name)
    try:
        upstream = await connect(
            url,
            additional_headers={"Authorization": f"Bearer {target.agent_token}"},
            max_size=None,
            open_timeout=5,
            compression=None,
        )
    except (OSError, InvalidStatus, WebSocketException, TimeoutError) as exc:
        log.info("console of %s refused by its agent: %s", target.instance_name, exc)
        await websocket.close(code=TRY_AGAIN, reason="the VM's host did not open its console")
        return
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="binary" if "binary" in offered else None)
    await _pump(websocket, upstream)


async def _pump(websocket: WebSocket, upstream: ClientConnection) -> None:
    async def to_agent() -> None:
        with contextlib.suppress(WebSocketDisconnect, ConnectionClosed):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None and message.get("text") is not None:
                    data = str(message["text"]).encode()
                if data:
                    await upstream.send(data)

    async def from_agent() -> None:
        with contextlib.suppress(ConnectionClosed, WebSocketDisconnect, RuntimeError):
            async for data in upstream:
                await websocket.send_bytes(data if isinstance(data, bytes) else data.encode())

    tasks = [asyncio.create_task(to_agent()), asyncio.create_task(from_agent())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
        with contextlib.suppress(Exception):
            await websocket.close()
