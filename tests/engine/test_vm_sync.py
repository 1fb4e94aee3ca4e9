"""VM sync: the agents' reports of power state win over the database, as in CloudStack. A VM stopped
behind Strato's back shows Stopped (with a VM.SYNC event), and one started behind its back shows
Running."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from simcloud import simulated_cloud

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ServerProcess, start_server
from strato.protocol.messages import StartVm, StopVm, VmSpec


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[ServerProcess, AgentProcess, dict[str, str]]]:
    server = start_server(tmp_path / "server")
    agent = start_agent(tmp_path / "agent", driver="simulator")
    try:
        ids = simulated_cloud(server.cs(), agent, tmp_path / "store")
        server.cs().updateConfiguration(name="ping.interval", value="1")
        yield server, agent, ids
    finally:
        agent.stop()
        server.stop()


def _until(fetch: Callable[[], Any], ok: Callable[[Any], bool], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not ok(value := fetch()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {value}"
        time.sleep(0.3)
    return value


def test_power_state_reported_by_the_agent_wins(cloud: tuple[ServerProcess, AgentProcess, dict[str, str]]) -> None:
    server, agent, ids = cloud
    api = server.cs()
    vm = api.deployVirtualMachine(zoneid=ids["zone"], serviceofferingid=ids["offering"], templateid=ids["template"],
                                  name="synced", fetch_result=True)["virtualmachine"]  # fmt: skip
    assert vm["state"] == "Running"

    def state() -> str:
        return str(api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"])

    agent.client().call(StopVm(name=vm["instancename"], force=True))  # behind Strato's back
    _until(state, lambda s: s == "Stopped", 30, "the VM to be synced to Stopped")
    events = api.listEvents(listall=True, type="VM.SYNC", resourceid=vm["id"]).get("event", [])
    assert any("found stopped" in e["description"] for e in events), events

    # Started again behind Strato's back (same spec as Strato would give it).
    spec = VmSpec(name=vm["instancename"], uuid=vm["id"], cpus=1, memory_mib=128)
    agent.client().call(StartVm(spec=spec))
    _until(state, lambda s: s == "Running", 30, "the VM to be synced to Running")
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["hostid"] == ids["host"]
