"""The agent HTTP service over real HTTP: auth, typed errors, tasks, and that it keeps serving."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from helpers.agentproc import AgentProcess
from helpers.fixtures import StartAgent
from strato.agent.dispatch import dispatch
from strato.agent.drivers.base import DriverError
from strato.agent.drivers.simulator import SimulatorDriver
from strato.agent.multi import simulator_fleet
from strato.agent.service import create_agent_app
from strato.protocol.client import AgentCallError
from strato.protocol.messages import (
    PROTOCOL_VERSION,
    ConfigureSimulator,
    ErrorCode,
    GetHostInfo,
    GetLayerInfo,
    GetVm,
    HostInfo,
    LayerRef,
    PoolRef,
    StopVm,
)


def post(agent: AgentProcess, body: bytes | str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or agent.token}", "Content-Type": "application/json"}
    return httpx.post(f"{agent.base_url}/v1/command", content=body, headers=headers)


def assert_still_serving(agent: AgentProcess) -> None:
    assert agent.alive()
    assert agent.client().health().ok


def test_health_reports_protocol_version(sim_agent: AgentProcess) -> None:
    health = sim_agent.client().health()
    assert health.ok and health.version == PROTOCOL_VERSION


def test_wrong_token_is_401_unauthorized(sim_agent: AgentProcess) -> None:
    with pytest.raises(AgentCallError) as err:
        sim_agent.client(token="wrong").call(GetHostInfo())
    assert err.value.code == ErrorCode.UNAUTHORIZED and err.value.status == 401
    with pytest.raises(AgentCallError) as err:
        sim_agent.client(token="wrong").health()
    assert err.value.status == 401
    assert_still_serving(sim_agent)


def test_missing_token_is_401(sim_agent: AgentProcess) -> None:
    for response in (
        httpx.get(f"{sim_agent.base_url}/v1/health"),
        httpx.post(f"{sim_agent.base_url}/v1/command", json={"command": {"type": "get_host_info"}}),
        httpx.get(f"{sim_agent.base_url}/v1/health", headers={"Authorization": f"Basic {sim_agent.token}"}),
    ):
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"


def test_unknown_command_type_is_specific(sim_agent: AgentProcess) -> None:
    response = post(sim_agent, json.dumps({"version": 1, "command": {"type": "launch_rocket", "x": 1}}))
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "unknown_command"
    assert "launch_rocket" in body["message"]
    assert_still_serving(sim_agent)


def test_malformed_json_is_bad_request(sim_agent: AgentProcess) -> None:
    for raw in ("{not json", "[1, 2]", ""):
        response = post(sim_agent, raw)
        assert response.status_code == 400, raw
        assert response.json()["code"] == "bad_request"
    assert_still_serving(sim_agent)


def test_validation_error_names_the_field(sim_agent: AgentProcess) -> None:
    spec = {"name": "v", "uuid": "u", "cpus": 0, "memory_mib": 64}
    response = post(sim_agent, json.dumps({"command": {"type": "start_vm", "spec": spec}}))
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "bad_request"
    assert "command.spec.cpus" in body["message"]

    response = post(sim_agent, json.dumps({"command": {"name": "v"}}))
    assert response.status_code == 400 and "type" in response.json()["message"]

    response = post(sim_agent, json.dumps({"command": {"type": "get_vm", "name": "v", "extra": 1}}))
    assert response.status_code == 400 and "command.extra" in response.json()["message"]


def test_newer_protocol_version_is_refused_clearly(sim_agent: AgentProcess) -> None:
    body = {"version": PROTOCOL_VERSION + 1, "command": {"type": "get_host_info"}}
    response = post(sim_agent, json.dumps(body))
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"
    assert "newer" in response.json()["message"]


def test_missing_vm_is_404_not_found(sim_agent: AgentProcess) -> None:
    client = sim_agent.client()
    for command in (GetVm(name="ghost"), StopVm(name="ghost")):
        with pytest.raises(AgentCallError) as err:
            client.call(command)
        assert err.value.code == ErrorCode.NOT_FOUND and err.value.status == 404
        assert "ghost" in err.value.message
    layer = LayerRef(pool=PoolRef(id="p", path="/nowhere"), name="x.qcow2")
    with pytest.raises(AgentCallError) as err:
        client.call(GetLayerInfo(layer=layer))
    assert err.value.status == 404
    assert_still_serving(sim_agent)


def test_unknown_task_is_404(sim_agent: AgentProcess) -> None:
    client = sim_agent.client()
    with pytest.raises(AgentCallError) as err:
        client.task("nope")
    assert err.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(AgentCallError) as err:
        client.cancel_task("nope")
    assert err.value.status == 404


def test_agent_logs_json_lines(sim_agent: AgentProcess) -> None:
    sim_agent.client().call(GetHostInfo())
    lines = (sim_agent.data_dir / "agent.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert any(entry["msg"] == "agent started" for entry in entries)
    assert all({"ts", "level", "msg"} <= entry.keys() for entry in entries)


# --- in-process (no subprocess needed) ---------------------------------------------------------------


class ExplodingDriver(SimulatorDriver):
    async def host_info(self) -> HostInfo:
        raise RuntimeError("boom")


def test_unexpected_exception_is_500_internal_and_agent_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_agent_app(ExplodingDriver(tmp_path), token="t")
    headers = {"Authorization": "Bearer t"}
    with TestClient(app) as http, caplog.at_level(logging.ERROR, logger="strato.agent"):
        response = http.post("/v1/command", json={"command": {"type": "get_host_info"}}, headers=headers)
        assert response.status_code == 500
        assert response.json()["code"] == "internal"
        assert "boom" in response.json()["message"]
        assert http.get("/v1/health", headers=headers).json() == {"ok": True, "version": PROTOCOL_VERSION}
    assert any("unexpected error" in record.getMessage() for record in caplog.records)


def test_qemu_driver_refuses_configure_simulator(tmp_path: Path) -> None:
    from strato.agent.drivers.qemu.driver import QemuDriver

    with pytest.raises(DriverError) as err:
        asyncio.run(dispatch(QemuDriver(tmp_path), ConfigureSimulator(command="start_vm", delay_s=1)))
    assert err.value.code == ErrorCode.BAD_REQUEST
    assert "the qemu driver does not support configure_simulator" in err.value.message


def test_multi_agent_app_routes_by_host_with_own_tokens(tmp_path: Path) -> None:
    app, hosts = simulator_fleet(tmp_path, 3, token="fleet")
    with TestClient(app) as http:
        for host in hosts:
            response = http.post(
                f"/{host.name}/v1/command",
                json={"command": {"type": "get_host_info"}},
                headers={"Authorization": f"Bearer {host.token}"},
            )
            assert response.status_code == 200
            assert response.json()["hostname"] == host.name
        other = http.get(f"/{hosts[0].name}/v1/health", headers={"Authorization": f"Bearer {hosts[1].token}"})
        assert other.status_code == 401
    assert {h.data_dir for h in hosts} == {tmp_path / f"host-{n}" for n in (1, 2, 3)}


def test_simulator_fleet_serves_many_hosts_over_http(agent_factory: StartAgent, tmp_path: Path) -> None:
    """200 simulated hosts in one process on one port, each reachable by AgentClient."""
    argv = [
        sys.executable, "-c",
        "import sys; from pathlib import Path; from strato.agent.multi import run_simulator_fleet; "
        "run_simulator_fleet(Path(sys.argv[1]), 200, sys.argv[2], 'fleet')",
        str(tmp_path / "fleet"), "{listen}",
    ]  # fmt: skip
    fleet = agent_factory(data_dir=tmp_path / "fleet", argv=argv, health_path="/host-1", health_token="fleet-host-1")
    for n in (1, 77, 200):
        client = fleet.client(token=f"fleet-host-{n}", path=f"/host-{n}")
        assert client.call(GetHostInfo()).hostname == f"host-{n}"
    with pytest.raises(AgentCallError) as err:
        fleet.client(token="fleet-host-1", path="/host-2").health()
    assert err.value.status == 401


def test_fleet_hosts_share_pools_but_not_their_local_pool(tmp_path: Path) -> None:
    app, hosts = simulator_fleet(tmp_path, 2, token="fleet")
    shared = {"pool": {"id": "nfs-1", "path": "/mnt/nfs-1"}, "name": "vol-1"}
    local = {"pool": {"id": "local", "path": "/whatever"}, "name": "vol-2"}
    with TestClient(app) as http:

        def command(host: int, body: dict[str, object]) -> httpx.Response:
            auth = {"Authorization": f"Bearer {hosts[host].token}"}
            response: httpx.Response = http.post(
                f"/{hosts[host].name}/v1/command", json={"command": body}, headers=auth
            )
            return response

        assert command(0, {"type": "create_layer", "layer": shared, "size_bytes": 1 << 30}).status_code == 200
        assert command(0, {"type": "create_layer", "layer": local, "size_bytes": 1 << 30}).status_code == 200
        assert command(1, {"type": "get_layer_info", "layer": shared}).json()["name"] == "vol-1"
        assert command(1, {"type": "get_layer_info", "layer": local}).status_code == 404
        disk = {"device_id": 0, "layer": shared}
        spec = {"name": "vm", "uuid": "u", "cpus": 1, "memory_mib": 64, "disks": [disk]}
        assert command(1, {"type": "start_vm", "spec": spec}).status_code == 200
    # and a restarted fleet still has them
    app, hosts = simulator_fleet(tmp_path, 2, token="fleet")
    with TestClient(app) as http:
        auth = {"Authorization": f"Bearer {hosts[0].token}"}
        body = {"command": {"type": "get_layer_info", "layer": shared}}
        assert http.post("/host-1/v1/command", json=body, headers=auth).status_code == 200


def test_finished_tasks_are_forgotten_after_retention_or_count() -> None:
    from strato.agent.tasks import TaskRegistry
    from strato.protocol.messages import Ack, TaskState

    async def scenario() -> None:
        registry = TaskRegistry(retention_s=3600, max_finished=3)

        async def body(progress: object) -> Ack:
            return Ack()

        ids = [registry.start("copy_layer", body) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert [registry.get(i) is not None for i in ids] == [False, False, True, True, True]
        report = registry.get(ids[-1])
        assert report is not None and report.state == TaskState.SUCCEEDED and report.answer == {"ok": True}

        registry.retention_s = 0
        await asyncio.sleep(0.01)
        assert registry.get(ids[-1]) is None

    asyncio.run(scenario())
