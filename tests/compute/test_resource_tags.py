"""Resource tags as list filters (CloudStack's `tags[i].key` / `tags[i].value` on listVirtualMachines,
listVolumes, listTemplates, listVMSnapshot, listSnapshots), tags given at createSnapshot, and a manual
snapshot counted as one of a policy's (createSnapshot `policyid`), on a simulator cloud."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException

_TESTS = Path(__file__).resolve().parents[1]
for extra in (str(_TESTS), str(_TESTS / "engine")):
    if extra not in sys.path:
        sys.path.insert(0, extra)

from simcloud import simulated_cloud  # noqa: E402

from helpers.agentproc import AgentProcess, start_agent  # noqa: E402
from helpers.serverproc import ServerProcess, start_server, wait_job  # noqa: E402


class Cloud:
    def __init__(self, server: ServerProcess, ids: dict[str, str]) -> None:
        self.ids = ids
        self.api: CloudStack = server.cs(timeout=60)

    def ok(self, started: dict[str, Any]) -> dict[str, Any]:
        job = wait_job(self.api, started["jobid"], 120)
        assert job["jobstatus"] == 1, job
        return dict(job.get("jobresult") or {})

    def deploy(self) -> dict[str, Any]:
        started = self.api.deployVirtualMachine(
            zoneid=self.ids["zone"],
            serviceofferingid=self.ids["offering"],
            templateid=self.ids["template"],
            name=f"tg-{uuid.uuid4().hex[:6]}",
        )
        return dict(self.ok(started)["virtualmachine"])

    def root(self, vm_id: str) -> dict[str, Any]:
        return dict(self.api.listVolumes(virtualmachineid=vm_id, type="ROOT")["volume"][0])


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    base = tmp_path_factory.mktemp("tags")
    server = start_server(base / "server")
    agent: AgentProcess | None = None
    try:
        agent = start_agent(base / "agent", token=f"t-{uuid.uuid4().hex[:8]}", driver="simulator")
        yield Cloud(server, simulated_cloud(server.cs(timeout=60), agent, base / "store"))
    finally:
        server.stop()
        if agent is not None:
            agent.stop()
        shutil.rmtree(base, ignore_errors=True)


def ids(items: list[dict[str, Any]] | None) -> set[str]:
    return {i["id"] for i in items or []}


def error(fn: Any) -> tuple[int, str]:
    try:
        fn()
    except CloudStackApiException as exc:
        err = exc.error if isinstance(exc.error, dict) else {}
        return int(err.get("errorcode", 0)), str(err.get("errortext", err))
    raise AssertionError("the call succeeded; an error was expected")


def test_lists_filter_by_tags(cloud: Cloud) -> None:
    api = cloud.api
    one, two = cloud.deploy(), cloud.deploy()
    run = uuid.uuid4().hex[:6]
    both = [{"key": f"env{run}", "value": "prod"}, {"key": f"team{run}", "value": "db"}]
    api.createTags(resourcetype="UserVm", resourceids=one["id"], tags=both)
    api.createTags(resourcetype="UserVm", resourceids=two["id"], tags=[{"key": f"env{run}", "value": "test"}])
    listed = lambda **kw: ids(api.listVirtualMachines(**kw).get("virtualmachine"))  # noqa: E731
    assert listed(tags=[{"key": f"env{run}", "value": "prod"}]) == {one["id"]}
    assert listed(tags=[{"key": f"env{run}"}]) == {one["id"], two["id"]}  # a key alone: any value
    assert listed(tags=[{"key": f"env{run}", "value": "prod"}, {"key": f"team{run}", "value": "db"}]) == {one["id"]}
    assert listed(tags=[{"key": f"env{run}", "value": "test"}, {"key": f"team{run}", "value": "db"}]) == set()
    assert listed(tags=[{"key": f"env{run}", "value": "none"}]) == set()
    code, text = error(lambda: api.listVirtualMachines(tags=[{"value": "prod"}]))
    assert code == 431 and "tags" in text, text

    vol = cloud.root(two["id"])
    api.createTags(resourcetype="Volume", resourceids=vol["id"], tags=[{"key": f"tier{run}", "value": "gold"}])
    assert ids(api.listVolumes(tags=[{"key": f"tier{run}", "value": "gold"}]).get("volume")) == {vol["id"]}

    api.createTags(
        resourcetype="Template", resourceids=cloud.ids["template"], tags=[{"key": f"os{run}", "value": "tiny"}]
    )
    found = api.listTemplates(templatefilter="all", tags=[{"key": f"os{run}", "value": "tiny"}]).get("template")
    assert ids(found) == {cloud.ids["template"]}

    vmsnap = cloud.ok(api.createVMSnapshot(virtualmachineid=one["id"], name=f"vs{run}"))["vmsnapshot"]
    api.createTags(resourcetype="VMSnapshot", resourceids=vmsnap["id"], tags=[{"key": f"keep{run}", "value": "yes"}])
    found = api.listVMSnapshot(tags=[{"key": f"keep{run}", "value": "yes"}]).get("vmSnapshot")
    assert ids(found) == {vmsnap["id"]}
    assert api.listVMSnapshot(tags=[{"key": f"keep{run}", "value": "no"}]).get("vmSnapshot", []) == []


def test_create_snapshot_with_tags_and_a_policy(cloud: Cloud) -> None:
    api = cloud.api
    run = uuid.uuid4().hex[:6]
    vm, other = cloud.deploy(), cloud.deploy()
    vol, other_vol = cloud.root(vm["id"]), cloud.root(other["id"])

    started = api.createSnapshot(volumeid=vol["id"], tags=[{"key": f"why{run}", "value": "before-upgrade"}])
    snap = cloud.ok(started)["snapshot"]
    assert [(t["key"], t["value"]) for t in snap["tags"]] == [(f"why{run}", "before-upgrade")]
    plain = cloud.ok(api.createSnapshot(volumeid=vol["id"]))["snapshot"]
    found = api.listSnapshots(tags=[{"key": f"why{run}", "value": "before-upgrade"}]).get("snapshot")
    assert ids(found) == {snap["id"]} and plain["id"] not in ids(found)
    tag = api.listTags(resourcetype="Snapshot", resourceid=snap["id"])["tag"]
    assert [(t["key"], t["resourcetype"]) for t in tag] == [(f"why{run}", "Snapshot")]
    assert snap["snapshottype"] == "MANUAL" and snap["intervaltype"] == "MANUAL"

    policy = api.createSnapshotPolicy(volumeid=vol["id"], intervaltype="HOURLY", schedule="30", maxsnaps=2,
                                      timezone="UTC")["snapshotpolicy"]  # fmt: skip
    counted = cloud.ok(api.createSnapshot(volumeid=vol["id"], policyid=policy["id"]))["snapshot"]
    assert counted["snapshottype"] == "RECURRING" and counted["intervaltype"] == "HOURLY"
    assert ids(api.listSnapshots(volumeid=vol["id"], intervaltype="HOURLY")["snapshot"]) == {counted["id"]}

    # Refused at once, nothing made: another volume's policy, an unknown one, tags without a key.
    before = len(api.listSnapshots(listall=True).get("snapshot", []))
    code, text = error(lambda: api.createSnapshot(volumeid=other_vol["id"], policyid=policy["id"]))
    assert code == 431 and "policyid" in text, text
    code, text = error(lambda: api.createSnapshot(volumeid=vol["id"], policyid=str(uuid.uuid4())))
    assert code == 431 and "policyid" in text, text
    code, text = error(lambda: api.createSnapshot(volumeid=vol["id"], tags=[{"value": "x"}]))
    assert code == 431 and "tags" in text, text
    assert len(api.listSnapshots(listall=True).get("snapshot", [])) == before

    # A deleted snapshot's tags are no longer listed.
    cloud.ok(api.deleteSnapshot(id=snap["id"]))
    assert api.listTags(resourcetype="Snapshot", resourceid=snap["id"]).get("tag", []) == []
