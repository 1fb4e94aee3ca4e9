"""createConsoleEndpoint: a VNC console of a running VM, through this server's websocket relay."""

from __future__ import annotations

from typing import Any

from strato.api.params import Param, T
from strato.api.registry import api
from strato.services.compute import console
from strato.services.core.context import CallContext


@api(
    "createConsoleEndpoint",
    "Creates a console endpoint to connect to a VM's console (a short-lived token for the websocket)",
    response="consoleendpoint",
    since="4.18.0",
    params=(
        Param("virtualmachineid", T.UUID, "ID of the VM", required=True),
        Param("token", T.STRING, "Extra security token (accepted, unused)", max_length=255),
    ),
)
def create_console_endpoint(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return console.create_endpoint(ctx, args["virtualmachineid"])
