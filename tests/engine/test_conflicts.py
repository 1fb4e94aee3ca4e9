"""Requests that race or that would orphan resources: refused with CloudStack's 536 (resource in use),
or, for two attaches of one volume, exactly one wins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException
from simcloud import simulated_cloud

from helpers.agentproc import start_agent
from helpers.serverproc import ServerProcess, start_server, wait_job


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    server = start_server(tmp_path / "server")
    agent = start_agent(tmp_path / "agent", driver="simulator")
    try:
        yield server, simulated_cloud(server.cs(), agent, tmp_path / "store")
    finally:
        agent.stop()
        server.stop()


def _code(call: Any) -> tuple[int, str]:
    with pytest.raises(CloudStackApiException) as err:
        call()
    return int(err.value.error["errorcode"]), str(err.value.error["errortext"])


def _deploy(api: CloudStack, ids: dict[str, str], name: str, **params: Any) -> dict[str, Any]:
    vm = api.deployVirtualMachine(zoneid=ids["zone"], serviceofferingid=ids["offering"], templateid=ids["template"],
                                  name=name, fetch_result=True, **params)  # fmt: skip
    return dict(vm["virtualmachine"])


def test_deleting_what_still_holds_resources_is_refused(cloud: tuple[ServerProcess, dict[str, str]]) -> None:
    server, ids = cloud
    api = server.cs()
    owner = api.createAccount(username="owner", password="pw", accounttype=0)["account"]
    vm = _deploy(api, ids, "owned", account="owner", domainid=owner["domainid"])
    [root] = api.listVolumes(virtualmachineid=vm["id"], listall=True)["volume"]
    code, text = _code(lambda: api.deleteAccount(id=owner["id"]))
    assert code == 536 and "VM owned" in text
    code, text = _code(lambda: api.deleteStoragePool(id=root["storageid"]))
    assert code == 536 and "volume" in text
    api.updateHost(id=ids["host"], allocationstate="Disable")
    code, text = _code(lambda: api.deleteHost(id=ids["host"]))
    assert code == 536 and "owned" in text
    api.updateHost(id=ids["host"], allocationstate="Enable")
    # Once the VM is gone, the account goes.
    api.destroyVirtualMachine(id=vm["id"], expunge=True, fetch_result=True)
    assert api.deleteAccount(id=owner["id"], fetch_result=True)["success"] in (True, "true")


def test_one_volume_attached_to_two_vms_at_once(cloud: tuple[ServerProcess, dict[str, str]]) -> None:
    server, ids = cloud
    api = server.cs()
    raw = server.cs(fetch_result=False)
    first, second = _deploy(api, ids, "first"), _deploy(api, ids, "second")
    vol = api.createVolume(zoneid=ids["zone"], diskofferingid=ids["disk_offering"], name="shared-disk",
                           fetch_result=True)["volume"]  # fmt: skip
    # Both requests before either job runs: the API accepts both; the jobs, serialized on the volume,
    # check again, and the second finds the volume taken.
    submitted: list[dict[str, Any]] = []
    for vm in (first, second):
        try:
            submitted.append(raw.attachVolume(id=vol["id"], virtualmachineid=vm["id"]))
        except CloudStackApiException as exc:  # the first job already ran: refused at once
            submitted.append({"error": exc.error})
    outcomes = [wait_job(api, s["jobid"]) if "jobid" in s else {"jobstatus": 2, "jobresult": s["error"]}
                for s in submitted]  # fmt: skip
    assert sorted(o["jobstatus"] for o in outcomes) == [1, 2], outcomes
    attached = api.listVolumes(id=vol["id"])["volume"][0]
    assert attached["virtualmachineid"] in (first["id"], second["id"])
    assert attached["state"] == "Ready"


def test_resize_beyond_the_pool_is_refused(cloud: tuple[ServerProcess, dict[str, str]]) -> None:
    server, ids = cloud
    api = server.cs()
    [pool] = api.listStoragePools(zoneid=ids["zone"], hostid=ids["host"], scope="host")["storagepool"]
    # On a pool: without one (nor a VM) createVolume only allocates the volume, as CloudStack does.
    vol = api.createVolume(zoneid=ids["zone"], diskofferingid=ids["disk_offering"], name="growing",
                           storageid=pool["id"], fetch_result=True)["volume"]  # fmt: skip
    api.updateStoragePool(id=vol["storageid"], capacitybytes=10 * 1024**3)  # x2 over-provisioning: 20 GiB
    grown = api.resizeVolume(id=vol["id"], size=4, fetch_result=True)["volume"]
    assert grown["size"] == 4 * 1024**3
    code, text = _code(lambda: api.resizeVolume(id=vol["id"], size=500, fetch_result=True))
    assert code == 533 and "growing" in text and "free" in text, text
    after = api.listVolumes(id=vol["id"])["volume"][0]
    assert after["size"] == 4 * 1024**3 and after["state"] == "Ready"
