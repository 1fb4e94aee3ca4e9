"""Volume snapshots on real QEMU (TCG, the tiny guest), through the `cs` client: the guest writes
generation 1 of its integrity blocks on its data disk, createSnapshot copies the running disk live
(blockdev-backup) to the image store, the guest then writes generation 2. A volume made from the
snapshot verifies as generation 1; revertSnapshot (refused while the VM runs or has VM snapshots, done
once it is stopped) makes the disk verify as generation 1 again; a template made from a snapshot of the root disk boots;
deleteSnapshot removes the file. Recurring snapshots of a policy keep at most maxsnaps, and a job
interrupted mid-create leaves no file and no snapshot in Creating."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from computelib import api_error
from qemuone import One, one_qemu_host

from helpers.serverproc import create_user_keys, wait_job
from strato.image.integrity import verify_image

pytestmark = [pytest.mark.qemu]

BLOCKS = 16


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[One]:
    base = tmp_path_factory.mktemp("vsnap")
    with one_qemu_host(base, "vsn", env={"STRATO_FAULT_FILE": str(base / "fault")}) as cloud:
        yield cloud


def _fails(one: One, started: dict[str, Any]) -> dict[str, Any]:
    job = wait_job(one.api(), started["jobid"], 180)
    assert job["jobstatus"] == 2, job
    return dict(job["jobresult"])


def _snapshot_file(one: One, snapshot_id: str) -> Path:
    ((path,),) = one.server.sql("SELECT path FROM snapshots WHERE id = ?", snapshot_id)
    return one.base / "store" / str(path)


def _pool(one: One) -> str:
    return str(one.api().listStoragePools(name="shared")["storagepool"][0]["id"])


def _volume_file(one: One, volume_id: str) -> Path:
    (row,) = one.server.sql(
        "SELECT p.path, l.path FROM volumes v JOIN layers l ON l.id = v.top_layer_id "
        "JOIN storage_pools p ON p.id = l.pool_id WHERE v.id = ?",
        volume_id,
    )
    return Path(row[0]) / row[1]


def _gens(path: Path) -> set[int]:
    report = verify_image(path)
    assert report.ok, report.summary()
    return set(report.generations.values())


def _wait(predicate: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_snapshot_of_a_running_disk_holds_its_instant(one: One) -> None:
    api = one.api()
    commands = f"integrity-write:vdb:{BLOCKS};sleep:30;integrity-loop:vdb:120:{BLOCKS};sleep:900"
    started = api.deployVirtualMachine(zoneid=one.ids["zone"], serviceofferingid=one.ids["offering"],
                                       templateid=one.ids["template"], diskofferingid=one.ids["disk"],
                                       name=f"vsn-{uuid.uuid4().hex[:6]}",
                                       **{"details[0].guestcommands": commands})  # fmt: skip
    one.ok(started)
    vm = api.listVirtualMachines(id=started["id"])["virtualmachine"][0]
    vols = {v["type"]: v for v in api.listVolumes(virtualmachineid=vm["id"])["volume"]}
    data, root = vols["DATADISK"], vols["ROOT"]
    one.wait_console(vm, f"STRATO-RUN-END integrity-write:vdb:{BLOCKS} rc=0")
    # A VM snapshot first: the disk's chain is then two layers of its own above the template's.
    vmsnap = one.ok(api.createVMSnapshot(virtualmachineid=vm["id"], name="layers"))["vmsnapshot"]
    data = api.listVolumes(id=data["id"])["volume"][0]

    # Live: the VM runs on, its chain as before (no layer added), the copy is flat and sparse.
    taken = api.createSnapshot(volumeid=data["id"], name="gen1")
    snap = one.ok(taken)["snapshot"]
    assert snap["id"] == taken["id"] and snap["state"] == "BackedUp" and snap["snapshottype"] == "MANUAL"
    assert snap["intervaltype"] == "MANUAL" and snap["volumeid"] == data["id"] and snap["volumetype"] == "DATADISK"
    assert snap["virtualsize"] == data["size"] and 0 < snap["physicalsize"] < snap["virtualsize"] // 4
    assert api.listVolumes(id=data["id"])["volume"][0]["chainsize"] == data["chainsize"]
    assert api.listVolumes(id=data["id"])["volume"][0]["state"] == "Ready"
    assert api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Running"
    stored = _snapshot_file(one, snap["id"])
    assert _gens(stored) == {1}

    one.wait_console(vm, "STRATO-INTEGRITY LOOP-DONE", timeout=120)
    assert _gens(stored) == {1}, "the snapshot holds the instant it was taken"

    listed = api.listSnapshots(volumeid=data["id"])
    assert listed["count"] == 1 and listed["snapshot"][0]["name"] == "gen1"
    assert api.listSnapshots(keyword="gen", snapshottype="MANUAL")["count"] == 1
    assert api.listSnapshots(snapshottype="RECURRING") == {}

    # A new volume from the snapshot, on the pool asked for.
    made = one.ok(api.createVolume(snapshotid=snap["id"], name="from-gen1", storageid=_pool(one)))["volume"]
    assert made["state"] == "Ready" and made["size"] == data["size"] and made["storageid"] == _pool(one)
    assert _gens(_volume_file(one, made["id"])) == {1}

    # Revert: refused while the VM runs (nothing changes), done once it is stopped.
    code, text = api_error(lambda: one.ok(api.revertSnapshot(id=snap["id"])))
    assert code == 431 and "Stopped" in text, text
    one.ok(api.stopVirtualMachine(id=vm["id"], forced=True))
    assert _gens(_volume_file(one, data["id"])) == {2}, "the guest wrote generation 2 after the snapshot"
    code, text = api_error(lambda: one.ok(api.revertSnapshot(id=snap["id"])))
    assert code == 431 and "VM snapshots" in text, text
    one.ok(api.deleteVMSnapshot(vmsnapshotid=vmsnap["id"]))
    one.ok(api.revertSnapshot(id=snap["id"]))
    assert _gens(_volume_file(one, data["id"])) == {1}
    reverted = api.listVolumes(id=data["id"])["volume"][0]
    assert reverted["state"] == "Ready" and reverted["chainsize"] == 1

    # The stopped root disk: an offline snapshot, a template from it, and a VM from the template boots.
    root_snap = one.ok(api.createSnapshot(volumeid=root["id"]))["snapshot"]
    assert root_snap["volumetype"] == "ROOT" and root_snap["state"] == "BackedUp"
    tmpl = one.ok(api.createTemplate(snapshotid=root_snap["id"], name="from-snap", ostypeid="Other"))["template"]
    assert tmpl["isready"] and tmpl["size"] == root["size"]
    one.ok(api.destroyVirtualMachine(id=vm["id"], expunge=True))
    booted = api.deployVirtualMachine(zoneid=one.ids["zone"], serviceofferingid=one.ids["offering"],
                                      templateid=tmpl["id"], name=f"vsn-{uuid.uuid4().hex[:6]}")  # fmt: skip
    one.ok(booted)
    vm2 = api.listVirtualMachines(id=booted["id"])["virtualmachine"][0]
    one.wait_console(vm2, "STRATO-TINY-BOOTED")
    one.ok(api.destroyVirtualMachine(id=vm2["id"], expunge=True))

    # The VM and its disks are gone; the snapshots stay on the image store (as CloudStack keeps them).
    kept = {s["id"]: s for s in api.listSnapshots()["snapshot"]}
    assert {snap["id"], root_snap["id"]} <= set(kept)
    assert not kept[root_snap["id"]]["revertable"]
    again = one.ok(api.createVolume(snapshotid=root_snap["id"], name="root-again"))["volume"]
    assert again["state"] == "Ready" and again["size"] == root["size"]

    # Delete: the file leaves the store.
    one.ok(api.deleteSnapshot(id=snap["id"]))
    assert not stored.exists()
    assert snap["id"] not in {s["id"] for s in api.listSnapshots().get("snapshot", [])}
    for vol_id in (made["id"], again["id"]):
        api.deleteVolume(id=vol_id)


def test_bad_input_and_other_accounts_are_refused(one: One) -> None:
    api = one.api()
    unknown = str(uuid.uuid4())
    for call in (
        lambda: api.createSnapshot(volumeid=unknown),
        lambda: api.deleteSnapshot(id=unknown),
        lambda: api.revertSnapshot(id=unknown),
        lambda: api.createVolume(snapshotid=unknown),
        lambda: api.createTemplate(snapshotid=unknown, name="x", ostypeid="Other"),
        lambda: api.createSnapshotPolicy(volumeid=unknown, intervaltype="DAILY", schedule="00:01", maxsnaps=1),
    ):
        code, text = api_error(call)
        assert code == 431 and unknown in text, text

    # A user's own volume (made by the admin for it on the shared pool), and the user's own snapshot.
    username = f"u{uuid.uuid4().hex[:6]}"
    user = create_user_keys(api, one.server.endpoint, username=username)
    mine = one.server.cs(user, timeout=120)
    owned = {"account": username, "domainid": user.domainid}
    vol = one.ok(api.createVolume(zoneid=one.ids["zone"], diskofferingid=one.ids["disk"], name="uvol",
                                  storageid=_pool(one), **owned))["volume"]  # fmt: skip
    snap = one.ok(mine.createSnapshot(volumeid=vol["id"]))["snapshot"]
    assert snap["account"] == username

    # The admin's snapshot is not the user's to see or touch.
    admin_vol = one.ok(api.createVolume(zoneid=one.ids["zone"], diskofferingid=one.ids["disk"], name="avol",
                                        storageid=_pool(one)))["volume"]  # fmt: skip
    admin_snap = one.ok(api.createSnapshot(volumeid=admin_vol["id"]))["snapshot"]
    for call in (
        lambda: mine.deleteSnapshot(id=admin_snap["id"]),
        lambda: mine.revertSnapshot(id=admin_snap["id"]),
        lambda: mine.createVolume(snapshotid=admin_snap["id"]),
    ):
        code, _text = api_error(call)
        assert code == 431
    assert {s["id"] for s in mine.listSnapshots(listall=True)["snapshot"]} == {snap["id"]}

    # The snapshot limit (resource type 3) of the account.
    api.updateResourceLimit(resourcetype=3, max=1, account=username, domainid=user.domainid)
    code, text = api_error(lambda: mine.createSnapshot(volumeid=vol["id"]))
    assert code == 532 and "snapshot" in text, text
    one.ok(mine.deleteSnapshot(id=snap["id"]))
    last = one.ok(mine.createSnapshot(volumeid=vol["id"]))["snapshot"]  # room again

    # Bad parameters name themselves.
    code, text = api_error(lambda: api.createSnapshot(volumeid=admin_vol["id"], quiescevm=True))
    assert code == 431 and "quiescevm" in text
    code, text = api_error(lambda: api.createSnapshotPolicy(volumeid=admin_vol["id"], intervaltype="DAILY",
                                                            schedule="61", maxsnaps=1))  # fmt: skip
    assert code == 431 and "schedule" in text
    code, text = api_error(lambda: api.createSnapshotPolicy(volumeid=admin_vol["id"], intervaltype="DAILY",
                                                            schedule="00:01", maxsnaps=99))  # fmt: skip
    assert code == 431 and "maxsnaps" in text

    # A volume deleted keeps its snapshots.
    api.deleteVolume(id=admin_vol["id"])
    left = api.listSnapshots(id=admin_snap["id"])["snapshot"][0]
    assert left["volumename"] == "avol" and left["state"] == "BackedUp" and not left["revertable"]
    one.ok(api.deleteSnapshot(id=admin_snap["id"]))

    # An account keeps its snapshots after its volumes go: it is deleted once they are gone too.
    api.deleteVolume(id=vol["id"])
    _wait(lambda: not api.listVolumes(id=vol["id"], listall=True).get("volume"), "the user's volume gone")
    code, text = api_error(lambda: one.ok(api.deleteAccount(id=user.accountid)))
    assert code == 536 and "snapshot" in text, text
    one.ok(api.deleteSnapshot(id=last["id"]))
    one.ok(api.deleteAccount(id=user.accountid))


def test_policy_keeps_at_most_maxsnaps(one: One) -> None:
    api = one.api()
    vol = one.ok(api.createVolume(zoneid=one.ids["zone"], diskofferingid=one.ids["disk"], name="pvol",
                                  storageid=_pool(one)))["volume"]  # fmt: skip
    api.updateConfiguration(name="snapshot.poll.interval", value="1")
    policy = api.createSnapshotPolicy(volumeid=vol["id"], intervaltype="HOURLY", schedule="0", maxsnaps=1,
                                      timezone="Europe/Paris")["snapshotpolicy"]  # fmt: skip
    assert policy["intervaltype"] == 0 and policy["maxsnaps"] == 1 and policy["schedule"] == "0"
    assert [p["id"] for p in api.listSnapshotPolicies(volumeid=vol["id"])["snapshotpolicy"]] == [policy["id"]]

    def recurring() -> list[dict[str, Any]]:
        found = api.listSnapshots(volumeid=vol["id"], snapshottype="RECURRING").get("snapshot", [])
        return [s for s in found if s["state"] == "BackedUp"]

    def due_now() -> None:  # the hour has come: the policy's next run is now
        one.server.sql("UPDATE snapshot_policies SET next_run = '2000-01-01 00:00:00.000000' WHERE id = ?",
                       policy["id"])  # fmt: skip

    due_now()
    (first,) = _wait(recurring, "the policy's first snapshot")
    assert first["intervaltype"] == "HOURLY"
    due_now()
    _wait(lambda: [s for s in recurring() if s["id"] != first["id"]], "the policy's second snapshot")
    # maxsnaps=1: the oldest is deleted once the new one is backed up.
    (kept,) = _wait(lambda: len(recurring()) == 1 and recurring(), "the oldest deleted")
    assert kept["id"] != first["id"] and not _snapshot_file(one, first["id"]).exists()

    api.deleteSnapshotPolicies(id=policy["id"])
    assert api.listSnapshotPolicies(volumeid=vol["id"]) == {}
    one.ok(api.deleteSnapshot(id=kept["id"]))
    api.deleteVolume(id=vol["id"])


def test_interrupted_create_leaves_nothing(one: One) -> None:
    api = one.api()
    vol = one.ok(api.createVolume(zoneid=one.ids["zone"], diskofferingid=one.ids["disk"], name="fvol",
                                  storageid=_pool(one)))["volume"]  # fmt: skip
    (one.base / "fault").write_text("snapshot.create back up")  # the worker dies once the copy is made
    started = api.createSnapshot(volumeid=vol["id"])
    result = _fails(one, started)
    assert result["errorcode"] == 534, result
    snap = api.listSnapshots(id=started["id"])["snapshot"][0]
    assert snap["state"] == "Error"
    assert not _snapshot_file(one, snap["id"]).exists()
    assert not list((one.base / "store" / "snapshots").rglob(f"*{snap['id']}*"))
    assert api.listVolumes(id=vol["id"])["volume"][0]["state"] == "Ready"
    one.ok(api.deleteSnapshot(id=snap["id"]))  # an Error snapshot is deleted too
    api.deleteVolume(id=vol["id"])
