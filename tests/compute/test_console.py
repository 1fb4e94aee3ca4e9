"""The VNC console through the API: createConsoleEndpoint's answer, the server's websocket relaying to
the agent's relay to QEMU's VNC server (the RFB greeting read without a browser), and refusals: an
expired token, another account's VM (as an unknown id), a stopped VM."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from computelib import Env
from cs import CloudStackApiException
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def console_vm(env: Env) -> Iterator[dict[str, Any]]:
    vm = env.deploy("console-vm")
    try:
        yield vm
    finally:
        env.destroy(vm["id"])


def _ws_url(env: Env, endpoint: dict[str, Any]) -> str:
    ws = endpoint["websocket"]
    base = env.server.base_url.replace("http://", "ws://")
    return f"{base}{ws['path']}?token={ws['token']}"


async def _greeting(url: str) -> bytes:
    async with connect(url, subprotocols=["binary"], open_timeout=10) as sock:  # type: ignore[list-item]
        data = await asyncio.wait_for(sock.recv(), 10)
        assert isinstance(data, bytes)
        return data


async def _refused(url: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, open_timeout=10):
            pass
    return info.value.response.status_code


def test_console_reads_rfb_and_refuses_others(env: Env, console_vm: dict[str, Any], make_user: Any) -> None:
    answer = env.api.createConsoleEndpoint(virtualmachineid=console_vm["id"])["consoleendpoint"]
    assert answer["success"] is True
    ws = answer["websocket"]
    assert {"host", "port", "path", "token", "extra"} <= set(ws)
    assert ws["token"] in answer["url"]
    greeting = asyncio.run(_greeting(_ws_url(env, answer)))
    assert greeting.startswith(b"RFB 003.00"), greeting

    # Another account's VM: refused as an unknown id, nothing handed out.
    other = env.client_for(make_user("console"))
    with pytest.raises(CloudStackApiException) as info:
        other.createConsoleEndpoint(virtualmachineid=console_vm["id"])
    assert info.value.error["errorcode"] == 431, info.value.error
    assert console_vm["id"] in info.value.error["errortext"]

    # A made-up token and an expired one: the websocket handshake is refused.
    bad = {"websocket": {**ws, "token": "not-a-token"}}
    assert asyncio.run(_refused(_ws_url(env, bad))) == 403
    env.api.updateConfiguration(name="console.token.seconds", value="1")
    try:
        short = env.api.createConsoleEndpoint(virtualmachineid=console_vm["id"])["consoleendpoint"]
        time.sleep(1.2)
        assert asyncio.run(_refused(_ws_url(env, short))) == 403
    finally:
        env.api.updateConfiguration(name="console.token.seconds", value="")
