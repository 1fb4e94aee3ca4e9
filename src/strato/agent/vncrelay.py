"""The agent's console relay (`/v1/console?vm=NAME`, a websocket): bytes between the caller and the VM's
VNC server, which QEMU binds to 127.0.0.1 only. The host's bearer token is checked as on every call."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.websockets import WebSocket, WebSocketDisconnect

from strato.agent.agentlog import get_logger
from strato.agent.auth import is_authorized
from strato.agent.drivers.base import Driver, DriverError

log = get_logger("vncrelay")

CHUNK = 64 * 1024
POLICY_VIOLATION = 1008  # websocket close codes
TRY_AGAIN = 1013


async def relay_console(websocket: WebSocket, driver: Driver, token: str) -> None:
    if not is_authorized(websocket, token):
        await websocket.close(code=POLICY_VIOLATION, reason="missing or wrong bearer token")
        return
    name = websocket.query_params.get("vm", "")
    try:
        report = await driver.get_vm(name)
    except DriverError as exc:
        await websocket.close(code=POLICY_VIOLATION, reason=exc.message[:120])
        return
    if report.vnc_port is None:
        await websocket.close(code=TRY_AGAIN, reason=f"VM {name} has no VNC server (not running)")
        return
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", report.vnc_port)
    except OSError as exc:
        await websocket.close(code=TRY_AGAIN, reason=f"VNC of {name} refused: {exc}"[:120])
        return
    await websocket.accept()
    log.info("console opened", extra={"vm": name, "port": report.vnc_port})

    async def to_vnc() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                writer.write(await websocket.receive_bytes())
                await writer.drain()

    async def from_vnc() -> None:
        while data := await reader.read(CHUNK):
            await websocket.send_bytes(data)

    tasks = [asyncio.create_task(to_vnc()), asyncio.create_task(from_vnc())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        with contextlib.suppress(Exception):
            await websocket.close()
        log.info("console closed", extra={"vm": name})
