"""Clients for the hosts' agents, one pooled client per host, shared by every thread of the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from pydantic import BaseModel

from strato.db.models import Host
from strato.errors import CloudError, InsufficientCapacity, ResourceUnavailable
from strato.protocol.client import AgentCallError, AgentClient, AgentClientError, AgentUnreachable
from strato.protocol.declare import AgentCommand
from strato.protocol.messages import ErrorCode

A = TypeVar("A", bound=BaseModel)

AGENT_WAIT_S = 90.0
"""How long an undo waits for an unreachable agent (a restart) before giving up."""
RETRY_S = 1.0

_clients: dict[tuple[str, str], AgentClient] = {}
_lock = threading.Lock()


def client_for(url: str, token: str, timeout: float = 30.0) -> AgentClient:
    """One pooled client per agent, so that every thread shares its connections."""
    key = (url, token)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = AgentClient(url, token, timeout=timeout, connect_timeout=3.0)
            _clients[key] = client
        return client


def host_client(host: Host) -> AgentClient:
    """The client of a host's agent."""
    return client_for(host.url, host.token)


def describe_failure(host_name: str, exc: Exception) -> ResourceUnavailable:
    """An agent failure as the API reports it: 534, naming the host and the cause."""
    if isinstance(exc, AgentUnreachable):
        return ResourceUnavailable(f"Host {host_name} is not reachable: {exc}")
    if isinstance(exc, AgentCallError) and exc.code in (ErrorCode.UNAUTHORIZED, ErrorCode.UNKNOWN_COMMAND):
        return ResourceUnavailable(f"Host {host_name} refused the command: {exc.message}")
    if isinstance(exc, AgentCallError):
        # The agent ran the command and it failed (a link that stalled, QEMU's error...).
        return ResourceUnavailable(f"Host {host_name} reported a failure: {exc.message}")
    return ResourceUnavailable(f"Host {host_name} failed: {exc}")


def agent_error(host_name: str, exc: AgentClientError) -> CloudError:
    """A failed agent call as the API answers it: 533 when the host ran out of room, else 534."""
    if isinstance(exc, AgentCallError) and exc.code == ErrorCode.INSUFFICIENT_CAPACITY:
        return InsufficientCapacity(f"Host {host_name}: {exc.message}")
    return describe_failure(host_name, exc)


@contextmanager
def agent_errors(host_name: str) -> Iterator[None]:
    """Agent calls inside raise the CloudError of agent_error, so that every caller answers alike."""
    try:
        yield
    except AgentClientError as exc:
        raise agent_error(host_name, exc) from None


def ask_until_reachable(
    client: AgentClient, host_name: str, command: AgentCommand[A], wait_s: float = AGENT_WAIT_S
) -> A:
    """The agent's answer to `command`, retried while the agent cannot be reached (CloudError after):
    for an undo that must know what the agent did, an agent that restarts is waited for, not guessed."""
    answer = _until_reachable(client, host_name, command, wait_s, missing_ok=False)
    assert answer is not None
    return answer


def find_until_reachable(
    client: AgentClient, host_name: str, command: AgentCommand[A], wait_s: float = AGENT_WAIT_S
) -> A | None:
    """As ask_until_reachable, but None when the agent answers that the thing asked about is not there."""
    return _until_reachable(client, host_name, command, wait_s, missing_ok=True)


def _until_reachable(
    client: AgentClient, host_name: str, command: AgentCommand[A], wait_s: float, missing_ok: bool
) -> A | None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.call(command)
        except AgentUnreachable as exc:
            if time.monotonic() >= deadline:
                raise agent_error(host_name, exc) from None
            time.sleep(RETRY_S)
        except AgentCallError as exc:
            if missing_ok and exc.code == ErrorCode.NOT_FOUND:
                return None
            raise agent_error(host_name, exc) from None


def close_all() -> None:
    """Closes every agent connection when the server stops."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
