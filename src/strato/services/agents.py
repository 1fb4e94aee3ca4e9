"""Clients for the hosts' agents, one pooled client per host, shared by every thread of the server."""

from __future__ import annotations

import threading

from strato.db.models import Host
from strato.errors import ResourceUnavailable
from strato.protocol.client import AgentCallError, AgentClient, AgentUnreachable

_clients: dict[tuple[str, str], AgentClient] = {}
_lock = threading.Lock()


def client_for(url: str, token: str, timeout: float = 30.0) -> AgentClient:
    key = (url, token)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = AgentClient(url, token, timeout=timeout, connect_timeout=3.0)
            _clients[key] = client
        return client


def host_client(host: Host) -> AgentClient:
    return client_for(host.url, host.token)


def describe_failure(host_name: str, exc: Exception) -> ResourceUnavailable:
    """An agent failure as the API reports it: 534, naming the host and the cause."""
    if isinstance(exc, AgentUnreachable):
        return ResourceUnavailable(f"Host {host_name} is not reachable: {exc}")
    if isinstance(exc, AgentCallError):
        return ResourceUnavailable(f"Host {host_name} refused the command: {exc.message}")
    return ResourceUnavailable(f"Host {host_name} failed: {exc}")


def close_all() -> None:
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
