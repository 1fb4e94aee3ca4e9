"""VNC consoles: createConsoleEndpoint's short-lived tokens, and what a token opens.

A token names one VM and the account that asked; it is kept in this server's memory (the answer
points the browser at this same server) and expires after `console.token.seconds`. Redeeming it
checks again that the VM runs and where, so that a VM moved since then is reached on its new host.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from strato.db.models import Host, VirtualMachine
from strato.errors import InvalidState
from strato.services.core import settings
from strato.services.core.access import get_vm
from strato.services.core.context import CallContext

WEBSOCKET_PATH = "/client/console/websocket"


@dataclass(frozen=True)
class _Grant:
    vm_id: str
    account_id: str
    expires: float  # time.monotonic()


@dataclass(frozen=True)
class ConsoleTarget:
    """Where a redeemed token leads: the VM's agent and its name there."""

    agent_url: str
    agent_token: str
    instance_name: str


class ConsoleTokens:
    """The tokens this server handed out, pruned as they expire."""

    def __init__(self) -> None:
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()

    def issue(self, vm_id: str, account_id: str, ttl_s: float) -> str:
        token = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            self._grants = {k: g for k, g in self._grants.items() if g.expires > now}
            self._grants[token] = _Grant(vm_id, account_id, now + ttl_s)
        return token

    def grant(self, token: str) -> _Grant | None:
        with self._lock:
            found = self._grants.get(token)
            if found is None:
                return None
            if found.expires <= time.monotonic():
                del self._grants[token]
                return None
            return found


TOKENS = ConsoleTokens()

# Set by the server at start: the address the answer names (the browser may use its own instead).
PUBLIC_ADDRESS: dict[str, Any] = {"host": "127.0.0.1", "port": 8080}


def _running_host(session: Session, vm: VirtualMachine) -> Host:
    if vm.state != "Running" or vm.host_id is None:
        raise InvalidState(f"VM {vm.name} is {vm.state}: a console needs a running VM")
    host = session.get(Host, vm.host_id)
    assert host is not None
    return host


def create_endpoint(ctx: CallContext, vm_id: str) -> dict[str, Any]:
    """CloudStack's consoleendpoint answer for a VM the caller may act on (others: unknown id)."""
    vm = get_vm(ctx, vm_id, "virtualmachineid")
    _running_host(ctx.session, vm)
    ttl = int(settings.get(ctx.session, "console.token.seconds"))
    token = TOKENS.issue(vm.id, vm.account_id, ttl)
    host, port = str(PUBLIC_ADDRESS["host"]), int(PUBLIC_ADDRESS["port"])
    return {
        "success": True,
        "details": f"Console for VM {vm.name}, valid {ttl} s",
        "url": f"http://{host}:{port}/client/#/console/{vm.id}?token={token}",
        "websocket": {"host": host, "port": str(port), "path": WEBSOCKET_PATH, "token": token, "extra": ""},
    }


def redeem(session: Session, token: str) -> ConsoleTarget | None:
    """The target of a valid token whose VM still belongs to the account and runs; else None."""
    found = TOKENS.grant(token)
    if found is None:
        return None
    vm = session.get(VirtualMachine, found.vm_id)
    if vm is None or vm.removed is not None or vm.account_id != found.account_id:
        return None
    if vm.state != "Running" or vm.host_id is None:
        return None
    host = session.get(Host, vm.host_id)
    if host is None:
        return None
    return ConsoleTarget(agent_url=host.url, agent_token=host.token, instance_name=vm.instance_name)
