"""Periodic housekeeping of a running server: a destroyed VM is expunged once expunge.delay has passed
(its root disk removed from the host), and finished jobs older than job.expire.minutes are purged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from simcloud import simulated_cloud

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ServerProcess, start_server
from strato.protocol.client import AgentCallError
from strato.protocol.messages import ErrorCode, GetLayerInfo, LayerRef, PoolRef


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[ServerProcess, AgentProcess, dict[str, str]]]:
    server = start_server(tmp_path / "server")
    agent = start_agent(tmp_path / "agent", driver="simulator")
    try:
        yield server, agent, simulated_cloud(server.cs(), agent, tmp_path / "store")
    finally:
        agent.stop()
        server.stop()


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_destroyed_vm_is_expunged_after_the_delay(cloud: tuple[ServerProcess, AgentProcess, dict[str, str]]) -> None:
    server, agent, ids = cloud
    api = server.cs()
    keep = api.deployVirtualMachine(zoneid=ids["zone"], serviceofferingid=ids["offering"], templateid=ids["template"],
                                    name="kept", fetch_result=True)["virtualmachine"]  # fmt: skip
    api.destroyVirtualMachine(id=keep["id"], fetch_result=True)  # the default delay is a day: it stays recoverable
    api.updateConfiguration(name="expunge.delay", value="0")
    gone = api.deployVirtualMachine(zoneid=ids["zone"], serviceofferingid=ids["offering"], templateid=ids["template"],
                                    name="gone", fetch_result=True)["virtualmachine"]  # fmt: skip
    [root] = api.listVolumes(virtualmachineid=gone["id"])["volume"]
    pool = api.listStoragePools(id=root["storageid"])["storagepool"][0]
    layer = LayerRef(pool=PoolRef(id=pool["id"], path=pool["path"]), name=root["path"][len(pool["path"]) + 1 :])
    agent.client().call(GetLayerInfo(layer=layer))  # the root disk exists on the host
    api.destroyVirtualMachine(id=gone["id"], fetch_result=True)
    _wait(lambda: api.listVirtualMachines(id=gone["id"]) == {}, 60, "the destroyed VM to be expunged")
    with pytest.raises(AgentCallError) as err:
        agent.client().call(GetLayerInfo(layer=layer))
    assert err.value.code == ErrorCode.NOT_FOUND
    # "kept" was destroyed with a delay of a day, but the delay is now 0: it goes too, which is what an
    # admin who shortens the delay asks for.
    _wait(lambda: api.listVirtualMachines(id=keep["id"]) == {}, 60, "the other destroyed VM to be expunged")


def test_finished_jobs_expire(cloud: tuple[ServerProcess, AgentProcess, dict[str, str]]) -> None:
    server, _, _ = cloud
    api = server.cs()
    account = api.createAccount(username="short-lived", password="pw", accounttype=0)["account"]
    job_id = api.deleteAccount(id=account["id"])["jobid"]
    _wait(lambda: server.sql("SELECT status FROM jobs WHERE id = ?", job_id) == [("succeeded",)], 30, "the job")
    api.updateConfiguration(name="job.expire.minutes", value="1")
    server.stop()
    server.sql("UPDATE jobs SET completed = '2000-01-01 00:00:00.000000' WHERE id = ?", job_id)
    server = server.restart()
    try:
        _wait(lambda: server.sql("SELECT count(*) FROM jobs WHERE id = ?", job_id) == [(0,)], 30, "the job to expire")
        assert server.sql("SELECT count(*) FROM jobs WHERE completed IS NULL") == [(0,)]
    finally:
        server.stop()
