"""Volume snapshots through the API on a simulator host (the control plane; what QEMU does is tested in
tests/compute/test_volume_snapshots_qemu.py): a snapshot's job reports its progress while the volume is
Snapshotting and the snapshot BackingUp; a copy that fails on the agent leaves the snapshot in Error
with the volume Ready; listing by the CloudStack filters and pages, listall for admins, a user's own
only; a cancelled copy; policies listed and deleted by ids."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ServerProcess, create_user_keys, wait_job
from helpers.simcloud import SimCloud, build_sim_cloud, deploy
from strato.protocol.messages import ConfigureSimulator


@pytest.fixture(scope="module")
def sim(admin: CloudStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimCloud, AgentProcess]]:
    base = tmp_path_factory.mktemp("snapapi")
    agent = start_agent(base / "agent", token=f"snap-{uuid.uuid4().hex[:8]}")
    try:
        yield build_sim_cloud(admin, agent, base), agent
    finally:
        agent.stop()


def _ok(client: CloudStack, started: dict[str, Any]) -> dict[str, Any]:
    job = wait_job(client, started["jobid"], 60)
    assert job["jobstatus"] == 1, job
    return dict(job["jobresult"])


def _root(client: CloudStack, vm_id: str) -> dict[str, Any]:
    return dict(client.listVolumes(virtualmachineid=vm_id)["volume"][0])


def test_progress_failure_and_listing(
    server: ServerProcess, admin: CloudStack, sim: tuple[SimCloud, AgentProcess]
) -> None:
    cloud, agent = sim
    user = create_user_keys(admin, server.endpoint, username=f"s{uuid.uuid4().hex[:6]}")
    mine = server.cs(user)
    vm = deploy(mine, cloud, f"svm-{uuid.uuid4().hex[:4]}")
    root = _root(mine, vm)

    # A slow copy: the job shows its progress, the volume Snapshotting, the snapshot BackingUp.
    agent.client().call(ConfigureSimulator(command="convert_layer", delay_s=3.0))
    started = mine.createSnapshot(volumeid=root["id"], name="slow")
    seen: set[tuple[str, str]] = set()
    progress: list[int] = []
    while (job := mine.queryAsyncJobResult(jobid=started["jobid"]))["jobstatus"] == 0:
        progress.append(int(job.get("jobprogress") or 0))
        snap = mine.listSnapshots(id=started["id"])["snapshot"][0]
        seen.add((snap["state"], mine.listVolumes(id=root["id"])["volume"][0]["state"]))
        time.sleep(0.2)
    agent.client().call(ConfigureSimulator(command="convert_layer", delay_s=0.0))
    assert job["jobstatus"] == 1, job.get("jobresult")
    assert ("BackingUp", "Snapshotting") in seen, seen
    assert any(0 < p < 100 for p in progress), progress
    assert mine.listVolumes(id=root["id"])["volume"][0]["state"] == "Ready"

    # A copy that fails on the agent: Error, the volume Ready, the limit not charged.
    agent.client().call(ConfigureSimulator(command="backup_disk", fail_count=1, fail_message="disk on fire"))
    failed = mine.createSnapshot(volumeid=root["id"], name="broken")
    job = wait_job(mine, failed["jobid"], 60)
    assert job["jobstatus"] == 2 and "disk on fire" in job["jobresult"]["errortext"], job
    assert mine.listSnapshots(id=failed["id"])["snapshot"][0]["state"] == "Error"
    assert mine.listVolumes(id=root["id"])["volume"][0]["state"] == "Ready"

    # Cancelled mid-copy: the job ends cancelled or failed, the snapshot in Error, the volume Ready.
    agent.client().call(ConfigureSimulator(command="backup_disk", delay_s=5.0))
    agent.client().call(ConfigureSimulator(command="convert_layer", delay_s=5.0))
    cancelled = mine.createSnapshot(volumeid=root["id"], name="cancelled")
    while mine.listSnapshots(id=cancelled["id"])["snapshot"][0]["state"] != "BackingUp":
        time.sleep(0.1)
    mine.cancelAsyncJob(jobid=cancelled["jobid"])
    job = wait_job(mine, cancelled["jobid"], 60)
    agent.client().call(ConfigureSimulator(command="backup_disk", delay_s=0.0))
    agent.client().call(ConfigureSimulator(command="convert_layer", delay_s=0.0))
    assert job["jobstatus"] in (2, 3), job
    assert mine.listSnapshots(id=cancelled["id"])["snapshot"][0]["state"] == "Error"
    assert mine.listVolumes(id=root["id"])["volume"][0]["state"] == "Ready"
    _ok(mine, mine.deleteSnapshot(id=cancelled["id"]))

    for i in range(3):
        _ok(mine, mine.createSnapshot(volumeid=root["id"], name=f"page-{i}"))
    assert mine.listSnapshots(volumeid=root["id"])["count"] == 5
    assert mine.listSnapshots(state="BackedUp", volumeid=root["id"])["count"] == 4
    page = mine.listSnapshots(keyword="page", page=2, pagesize=2)
    assert page["count"] == 3 and len(page["snapshot"]) == 1
    assert mine.listSnapshots(name="slow")["snapshot"][0]["volumename"] == root["name"]
    # The admin sees them with listall (not by default); another user does not.
    assert not any(s["id"] == started["id"] for s in admin.listSnapshots().get("snapshot", []))
    assert any(s["id"] == started["id"] for s in admin.listSnapshots(listall=True)["snapshot"])
    other = server.cs(create_user_keys(admin, server.endpoint, username=f"o{uuid.uuid4().hex[:6]}"))
    assert other.listSnapshots(listall=True) == {}
    with pytest.raises(CloudStackApiException) as hidden:
        other.createSnapshotPolicy(volumeid=root["id"], intervaltype="DAILY", schedule="00:01", maxsnaps=2)
    assert hidden.value.error["errorcode"] == 431

    (limit,) = mine.listResourceLimits(resourcetype=3)["resourcelimit"]
    assert limit["resourcetypename"] == "snapshot" and limit["max"] == 20  # max.account.snapshots

    daily = mine.createSnapshotPolicy(volumeid=root["id"], intervaltype="daily", schedule="00:01", maxsnaps=2)
    weekly = mine.createSnapshotPolicy(volumeid=root["id"], intervaltype="WEEKLY", schedule="00:01:2", maxsnaps=2)
    again = mine.createSnapshotPolicy(volumeid=root["id"], intervaltype="DAILY", schedule="30:02", maxsnaps=3)
    assert again["snapshotpolicy"]["id"] == daily["snapshotpolicy"]["id"]  # one policy per interval type
    listed = {p["id"]: p for p in mine.listSnapshotPolicies(volumeid=root["id"])["snapshotpolicy"]}
    assert listed[daily["snapshotpolicy"]["id"]]["schedule"] == "30:02" and len(listed) == 2
    assert listed[weekly["snapshotpolicy"]["id"]]["intervaltype"] == 2
    assert other.listSnapshotPolicies(listall=True) == {}
    mine.deleteSnapshotPolicies(ids=",".join(listed))
    assert mine.listSnapshotPolicies(volumeid=root["id"]) == {}


def test_usage_records_bill_a_volume_snapshot_until_it_is_deleted(
    server: ServerProcess, admin: CloudStack, sim: tuple[SimCloud, AgentProcess]
) -> None:
    """CloudStack's usage type 9: one record per snapshot per period, with its file's size, whose hours stop
    growing once it is deleted."""
    cloud, _agent = sim
    user = create_user_keys(admin, server.endpoint, username=f"u{uuid.uuid4().hex[:6]}")
    mine = server.cs(user)
    root = _root(mine, deploy(mine, cloud, f"uvm-{uuid.uuid4().hex[:4]}"))
    snap = _ok(mine, mine.createSnapshot(volumeid=root["id"], name="billed"))["snapshot"]
    time.sleep(1.5)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    span = {"startdate": yesterday, "enddate": today, "type": 9, "usageid": snap["id"]}

    def hours() -> float:
        admin.generateUsageRecords(startdate=yesterday, enddate=today)
        rows = admin.listUsageRecords(**span).get("usagerecord", [])
        assert rows and all(r["account"] == snap["account"] and int(r["size"]) == int(snap["physicalsize"])
                            for r in rows), rows  # fmt: skip
        return sum(float(r["rawusage"]) for r in rows)

    alive = hours()
    assert alive >= 1 / 3600, alive
    _ok(mine, mine.deleteSnapshot(id=snap["id"]))
    ended = hours()
    time.sleep(1.2)
    assert hours() == pytest.approx(ended) and ended >= alive  # deleted: billed no more
