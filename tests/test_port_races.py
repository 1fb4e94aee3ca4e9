"""Parallel tests (pytest-xdist) pick ports at random: a port taken between free_port() and the server's
own bind must neither fail the test nor let the health check reach the other process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import agentproc, serverproc
from helpers.agentproc import free_port, listens_on, start_agent


@pytest.fixture
def squatter() -> Iterator[tuple[socket.socket, int]]:
    """A listening socket of this process on a port free_port() is about to hand out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    port = free_port()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    try:
        yield sock, port
    finally:
        sock.close()


def test_agent_retries_on_another_port_when_its_port_was_taken(
    tmp_path: Path, squatter: tuple[socket.socket, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = squatter[1]
    picks = iter([taken])
    monkeypatch.setattr(agentproc, "free_port", lambda: next(picks, None) or free_port())
    agent = start_agent(tmp_path / "agent")
    try:
        assert agent.port != taken
        assert listens_on(agent.proc.pid, agent.port) and not listens_on(agent.proc.pid, taken)
        assert agent.client().health()
    finally:
        agent.stop()


def test_server_retries_on_another_port_when_its_port_was_taken(
    tmp_path: Path, squatter: tuple[socket.socket, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = squatter[1]
    picks = iter([taken])
    monkeypatch.setattr(serverproc, "free_port", lambda: next(picks, None) or free_port())
    server = serverproc.start_server(tmp_path / "server")
    try:
        assert server.port != taken
        assert server.cs().listZones() == {}
    finally:
        server.stop()
