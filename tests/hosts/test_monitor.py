"""The host monitor against real agents: a killed agent's host goes Disconnected then Alert (with events),
comes back Up when the agent returns; the monitor refreshes pool capacity; /metrics shows its rounds.

ping.interval is 1 s in this module's server, so Alert comes 2.5 s (ping.timeout x interval) after the
first failed ping. Every wait polls with a generous deadline: the machine may be loaded."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cs import CloudStack
from hostlib import Cluster, MakeCluster, wait_until

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ServerProcess
from strato.protocol.messages import CreateLayer, LayerRef, PoolRef

StartAgent = Callable[..., AgentProcess]
DEADLINE = 45.0


@pytest.fixture(scope="module", autouse=True)
def fast_pings(admin: CloudStack) -> None:
    admin.updateConfiguration(name="ping.interval", value="1")
    [cfg] = admin.listConfigurations(name="ping.interval")["configuration"]
    assert str(cfg["value"]) == "1"


def events(api: CloudStack, kind: str, resource_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.listEvents(listall=True, type=kind, resourceid=resource_id).get("event", [])
    return found


def host_state(cluster: Cluster, host_id: str) -> str:
    return str(cluster.host(host_id)["state"])


def test_killed_agent_goes_disconnected_then_alert_then_up_again(
    make_cluster: MakeCluster, agent_factory: StartAgent
) -> None:
    cluster = make_cluster("Simulator")
    victim_agent = agent_factory(token="victim")
    victim = cluster.add_host(victim_agent)
    bystander = cluster.add_host(agent_factory(token="bystander"))
    api = cluster.api
    first_ping = wait_until(lambda: cluster.host(victim["id"]), lambda h: "lastpinged" in h, DEADLINE, "first ping")[
        "lastpinged"
    ]

    os.kill(victim_agent.proc.pid, signal.SIGKILL)
    victim_agent.proc.wait(timeout=10)

    seen: list[str] = []

    def observe() -> str:
        state = host_state(cluster, victim["id"])
        if not seen or seen[-1] != state:
            seen.append(state)
        return state

    wait_until(observe, lambda s: s == "Alert", DEADLINE, "killed agent's host in Alert", interval=0.1)
    assert seen[0] in ("Up", "Disconnected") and seen[-2:] == ["Disconnected", "Alert"], seen
    down = cluster.host(victim["id"])
    assert "disconnected" in down and down["lastpinged"] >= first_ping
    assert down["resourcestate"] == "Enabled"  # the connection state is separate from allocation

    [disconnected] = events(api, "HOST.DISCONNECTED", victim["id"])
    [alert] = events(api, "HOST.ALERT", victim["id"])
    assert disconnected["level"] == "WARN" and alert["level"] == "ERROR"
    assert victim["name"] in disconnected["description"] and "from Up to Disconnected" in (disconnected["description"])
    assert "from Disconnected to Alert" in alert["description"]
    assert disconnected["created"] <= alert["created"]
    # The other host of the cluster never left Up.
    assert host_state(cluster, bystander["id"]) == "Up"
    assert events(api, "HOST.DISCONNECTED", bystander["id"]) == []

    # The agent comes back on the same address with the same state: the host is Up again.
    revived = start_agent(victim_agent.data_dir, token="victim", port=victim_agent.port)
    try:
        wait_until(lambda: host_state(cluster, victim["id"]), lambda s: s == "Up", DEADLINE, "host Up again")
        [up] = events(api, "HOST.UP", victim["id"])
        assert up["level"] == "INFO" and "from Alert to Up" in up["description"]
        assert "disconnected" not in cluster.host(victim["id"])
    finally:
        revived.stop()


def test_agent_back_before_alert_goes_straight_up(
    make_cluster: MakeCluster, agent_factory: StartAgent, admin: CloudStack
) -> None:
    # A longer ping.timeout for this test only: Disconnected lasts 30 s, time enough to restart.
    admin.updateConfiguration(name="ping.timeout", value="30")
    try:
        cluster = make_cluster("Simulator")
        agent = agent_factory(token="blip")
        host = cluster.add_host(agent)
        os.kill(agent.proc.pid, signal.SIGKILL)
        agent.proc.wait(timeout=10)
        wait_until(lambda: host_state(cluster, host["id"]), lambda s: s == "Disconnected", DEADLINE, "Disconnected")
        revived = start_agent(agent.data_dir, token="blip", port=agent.port)
        try:
            wait_until(lambda: host_state(cluster, host["id"]), lambda s: s == "Up", DEADLINE, "Up again")
        finally:
            revived.stop()
        assert events(cluster.api, "HOST.ALERT", host["id"]) == []
        [up] = events(cluster.api, "HOST.UP", host["id"])
        assert "from Disconnected to Up" in up["description"]
    finally:
        admin.updateConfiguration(name="ping.timeout", value="")


def test_monitor_refreshes_pool_usage(make_cluster: MakeCluster, agent_factory: StartAgent) -> None:
    cluster = make_cluster("Simulator")
    agent = agent_factory()
    host = cluster.add_host(agent)
    [local] = cluster.pools(hostid=host["id"])
    assert local["disksizeused"] == 0
    pool = PoolRef(id=local["id"], path=local["path"])  # as the server names it to the agent
    info = agent.client().call(
        CreateLayer(layer=LayerRef(pool=pool, name=f"{uuid.uuid4().hex}.qcow2"), size_bytes=1 << 30)
    )
    wait_until(
        lambda: cluster.pools(id=local["id"])[0]["disksizeused"],
        lambda used: used == info.physical_size,
        DEADLINE,
        "pool usage reported by the monitor",
    )


def test_admin_capacity_survives_monitor_reports(make_cluster: MakeCluster, agent_factory: StartAgent) -> None:
    """A capacity an admin set (capacitybytes) is kept; the agents still refresh the used bytes."""
    cluster = make_cluster("Simulator")
    agent = agent_factory()
    host = cluster.add_host(agent)
    [local] = cluster.pools(hostid=host["id"])
    cluster.api.updateStoragePool(id=local["id"], capacitybytes=5 << 30)
    pool = PoolRef(id=local["id"], path=local["path"])
    info = agent.client().call(
        CreateLayer(layer=LayerRef(pool=pool, name=f"{uuid.uuid4().hex}.qcow2"), size_bytes=1 << 30)
    )
    wait_until(
        lambda: cluster.pools(id=local["id"])[0],
        lambda p: p["disksizeused"] == info.physical_size,
        DEADLINE,
        "pool usage reported by the monitor",
    )
    assert cluster.pools(id=local["id"])[0]["disksizetotal"] == 5 << 30


def test_metrics_show_the_monitor_rounds(
    server: ServerProcess, make_cluster: MakeCluster, agent_factory: StartAgent
) -> None:
    cluster = make_cluster("Simulator")
    cluster.add_host(agent_factory())

    def scrape() -> dict[str, float]:
        text = httpx.get(server.base_url + "/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if line.startswith("strato_monitor_"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    metrics = wait_until(
        scrape,
        lambda m: m.get('strato_monitor_last_round_hosts{outcome="answered"}', 0) >= 1,
        DEADLINE,
        "a monitor round that pinged the host",
    )
    assert metrics["strato_monitor_last_round_seconds"] > 0
    assert metrics['strato_monitor_last_round_hosts{outcome="all"}'] >= 1
