"""Pytest fixtures starting real simulator agents (subprocesses); import them into a conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.agentproc import AgentProcess, start_agent

StartAgent = Callable[..., AgentProcess]


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[StartAgent]:
    """Start agents on demand (same arguments as start_agent); all are stopped at teardown."""
    started: list[AgentProcess] = []

    def start(**kwargs: Any) -> AgentProcess:
        kwargs.setdefault("data_dir", tmp_path / f"agent{len(started)}")
        agent = start_agent(**kwargs)
        started.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in started:
            agent.stop()


@pytest.fixture(scope="module")
def sim_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One simulator agent shared by a module's tests (which therefore use distinct names)."""
    agent = start_agent(tmp_path_factory.mktemp("sim-agent"), token="module-token")
    try:
        yield agent
    finally:
        agent.stop()
