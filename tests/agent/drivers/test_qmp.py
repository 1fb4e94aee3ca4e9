"""QmpSession against a fake QMP server: the negotiation race QEMU can produce is retried."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest

from strato.agent.drivers.qemu.qmp import QmpUnavailable, qmp_execute

pytestmark = pytest.mark.anyio

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}
EVENT = {"event": "RESET", "data": {"guest": False, "reason": "host-qmp-system-reset"},
         "timestamp": {"seconds": 1, "microseconds": 2}}  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def fake_qemu(path: Path, racy_negotiations: int) -> asyncio.Server:
    """Answers qmp_capabilities after an event for the first `racy_negotiations` connections (what
    QEMU does when an event is emitted while it negotiates), then `query-status` normally."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        racy = connections <= racy_negotiations

        def send(obj: object) -> None:
            writer.write(json.dumps(obj).encode() + b"\r\n")

        send(GREETING)
        decoder, buffer = json.JSONDecoder(), ""
        while data := await reader.read(4096):
            buffer = (buffer + data.decode()).lstrip()
            try:
                request, end = decoder.raw_decode(buffer)
            except ValueError:
                continue
            buffer = buffer[end:]
            if request["execute"] == "qmp_capabilities" and racy:
                send(EVENT)
            send({"return": {"status": "running", "running": True} if request["execute"] == "query-status" else {},
                  "id": request.get("id")})  # fmt: skip
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, path=str(path))


async def test_negotiation_race_is_retried() -> None:
    with tempfile.TemporaryDirectory(prefix="strato-qmp-") as tmp:
        sock = Path(tmp) / "qmp.sock"
        server = await fake_qemu(sock, racy_negotiations=2)
        try:
            assert (await qmp_execute(sock, "query-status"))["status"] == "running"
        finally:
            server.close()
            await server.wait_closed()

        server = await fake_qemu(sock, racy_negotiations=100)
        try:
            with pytest.raises(QmpUnavailable) as err:
                await qmp_execute(sock, "query-status")
            assert "Negotiation failed" in err.value.message
        finally:
            server.close()
            await server.wait_closed()
