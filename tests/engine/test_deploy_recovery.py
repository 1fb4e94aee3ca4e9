"""A deployment whose server dies mid-way is recovered as its kind defines: after the restart, what the
deploy had made on the host is removed, the job fails with a text that says so, and the VM ends in Error
(not stuck in Starting) with no volumes. The host is a simulator agent whose create_layer is slowed down,
so that the server can be killed while the deploy waits on it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from simcloud import simulated_cloud

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ServerProcess, start_server, wait_job
from strato.protocol.client import AgentCallError
from strato.protocol.messages import ConfigureSimulator, ErrorCode, GetLayerInfo, LayerRef, PoolRef

DELAY_S = 4.0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[ServerProcess, AgentProcess]]:
    server = start_server(tmp_path / "server")
    agent = start_agent(tmp_path / "agent", driver="simulator")
    try:
        yield server, agent
    finally:
        agent.stop()
        server.stop()


def _steps(server: ServerProcess, job_id: str) -> list[dict[str, str]]:
    rows = server.sql("SELECT steps FROM jobs WHERE id = ?", job_id)
    raw = rows[0][0] if rows else None
    return json.loads(raw) if isinstance(raw, str) else (raw or [])


@pytest.mark.parametrize(
    ("slow_command", "step"),
    [("copy_layer", "template on pool for ROOT"), ("create_layer", "create ROOT")],
    ids=["during-template-copy", "during-disk-creation"],
)
def test_deploy_interrupted_by_a_server_crash_is_rolled_back(
    env: tuple[ServerProcess, AgentProcess], tmp_path: Path, slow_command: str, step: str
) -> None:
    server, agent = env
    api = server.cs()
    ids = simulated_cloud(api, agent, tmp_path / "store")
    agent.client().call(ConfigureSimulator(command=slow_command, delay_s=DELAY_S))
    started = api.deployVirtualMachine(zoneid=ids["zone"], serviceofferingid=ids["offering"],
                                       templateid=ids["template"], name="crashy")  # fmt: skip
    job_id, vm_id = started["jobid"], started["id"]

    deadline = time.monotonic() + 30
    # The step is logged running a moment before its layer row is written: wait for both, and remember the
    # rows seen then, so that the kill lands while the agent is slowly making the file.
    creating = ("SELECT l.path, p.path FROM layers l JOIN storage_pools p ON p.id = l.pool_id "
                "WHERE l.state = 'Creating'")  # fmt: skip
    layers: list[tuple[object, ...]] = []
    while not (any(s["name"] == step and s["state"] == "running" for s in _steps(server, job_id)) and layers):
        assert time.monotonic() < deadline, _steps(server, job_id)
        status = server.sql("SELECT status, result FROM jobs WHERE id = ?", job_id)
        assert status[0][0] in ("queued", "running"), status
        layers = server.sql(creating)
        time.sleep(0.05)
    server.kill()
    assert layers, "the deploy had recorded the layer it was creating"
    time.sleep(DELAY_S + 1)  # the agent finishes the create_layer it was asked for

    server = server.restart()
    try:
        api = server.cs()
        job = wait_job(api, job_id, timeout=60)
        assert job["jobstatus"] == 2, job
        assert "interrupted" in job["jobresult"]["errortext"], job
        vm = api.listVirtualMachines(id=vm_id)["virtualmachine"][0]
        assert vm["state"] == "Error"
        assert api.listVolumes(virtualmachineid=vm_id, listall=True) == {}
        client = agent.client()
        for path, pool_path in layers:
            with pytest.raises(AgentCallError) as err:
                client.call(GetLayerInfo(layer=LayerRef(pool=PoolRef(id="x", path=pool_path), name=path)))
            assert err.value.code == ErrorCode.NOT_FOUND
        assert server.sql("SELECT count(*) FROM layers WHERE state = 'Creating' AND removed IS NULL") == [(0,)]
        assert server.sql("SELECT count(*) FROM layers WHERE kind = 'volume' AND removed IS NULL") == [(0,)]
        # The host and the template can be used again at once (a template copy is made anew if needed).
        agent.client().call(ConfigureSimulator(command=slow_command, delay_s=0))
        again = api.deployVirtualMachine(zoneid=ids["zone"], serviceofferingid=ids["offering"],
                                         templateid=ids["template"], name="fine", fetch_result=True)  # fmt: skip
        assert again["virtualmachine"]["state"] == "Running"
    finally:
        server.stop()
