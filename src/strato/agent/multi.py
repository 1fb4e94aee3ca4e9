"""Many simulated agents behind one port: `/<host>/v1/...` goes to that host's agent.

Scale tests of the control plane run hundreds of simulated hosts; one uvicorn process serving them all
keeps that cheap (one event loop, one listening socket). Each host keeps its own data dir and token.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount

from strato.agent.drivers.base import Driver
from strato.agent.drivers.simulator import SharedStorage, SimulatorConfig, SimulatorDriver
from strato.agent.service import AgentState, agent_routes

SHARED_STORAGE_FILE = "shared-pools.json"
"""In the fleet's base dir: the layers of every pool but the hosts' local ones (see SharedStorage)."""


@dataclass(frozen=True)
class SimHost:
    """One simulated host of a fleet: its URL prefix, data dir and bearer token."""

    name: str
    data_dir: Path
    token: str

    def base_url(self, root_url: str) -> str:
        """The agent URL for this host when the fleet is served at `root_url` (e.g. http://127.0.0.1:8250)."""
        return f"{root_url.rstrip('/')}/{self.name}"


def create_multi_agent_app(agents: Sequence[tuple[str, Driver, str]]) -> Starlette:
    """One ASGI app serving several agents, each given as (name, driver, token), under `/<name>/`.

    All drivers are started on startup and closed on shutdown, as a single agent's are."""
    states = [AgentState(driver, token, name=name) for name, driver, token in agents]
    names = [state.name for state in states]
    if len(set(names)) != len(names):
        raise ValueError("agent names must be unique")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started: list[AgentState] = []
        try:
            for state in states:
                await state.startup()
                started.append(state)
            yield
        finally:
            for state in reversed(started):
                await state.shutdown()

    routes = [Mount(f"/{state.name}", routes=agent_routes(state)) for state in states]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.agents = {state.name: state for state in states}
    return app


def simulator_fleet(
    base_dir: Path,
    count: int,
    token: str | None = None,
    prefix: str = "host-",
    config: SimulatorConfig | None = None,
) -> tuple[Starlette, list[SimHost]]:
    """`count` simulator agents with data dirs `base_dir/<prefix>N` (N from 1), served by one app.

    The hosts share every pool except their own local one (by pool id), as a cluster's hosts share
    its mounted pools. Each host gets the token `<token>-<name>` when `token` is given, else a random
    one; the returned SimHost list says which, for registering the hosts with the server."""
    shared = SharedStorage(Path(base_dir) / SHARED_STORAGE_FILE)
    hosts: list[SimHost] = []
    agents: list[tuple[str, Driver, str]] = []
    for index in range(1, count + 1):
        name = f"{prefix}{index}"
        host_token = f"{token}-{name}" if token else secrets.token_urlsafe(24)
        data_dir = Path(base_dir) / name
        driver = SimulatorDriver(data_dir, config=config.model_copy() if config else None, shared=shared)
        if driver.config.hostname is None:
            driver.config.hostname = name
        hosts.append(SimHost(name=name, data_dir=data_dir, token=host_token))
        agents.append((name, driver, host_token))
    return create_multi_agent_app(agents), hosts


def run_simulator_fleet(base_dir: Path, count: int, listen: str, token: str, prefix: str = "host-") -> None:
    """Serve `count` simulator agents on one port until interrupted (host N at /<prefix>N/v1/...)."""
    from strato.agent.agentlog import setup_agent_logging
    from strato.agent.service import serve

    setup_agent_logging(Path(base_dir))
    app, _ = simulator_fleet(Path(base_dir), count, token=token, prefix=prefix)
    serve(app, listen)
