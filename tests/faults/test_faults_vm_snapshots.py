"""The VM snapshot operations stopped after each of their steps, then recovered (simulator): the job ends,
nothing stays Creating/Reverting/Expunging, the database's layers match the simulator's records, and the
tree the user sees is consistent with the job's outcome.

createVMSnapshot (running, with memory): Ready and current, or Error with no layer left behind.
revertToVMSnapshot (DiskAndMemory): the VM Running on a new top over the snapshot's layers, or as it was.
deleteVMSnapshot (one child: a live merge): gone with its layers merged, or still there, Ready or Error."""

from __future__ import annotations

from typing import Any

from conftest import FaultCloud
from helpers.faultlib import Promises, run_fault_matrix


def _deploy(cloud: FaultCloud) -> dict[str, Any]:
    started = cloud.api().deployVirtualMachine(zoneid=cloud.ids["zone"], serviceofferingid=cloud.ids["offering"],
                                               templateid=cloud.ids["template"], name=cloud.name("sv"))  # fmt: skip
    cloud.ok(started, timeout=120)
    return dict(cloud.api().listVirtualMachines(id=started["id"], listall=True)["virtualmachine"][0])


def _snaps(cloud: FaultCloud, vm_id: str) -> list[dict[str, Any]]:
    return list(cloud.api().listVMSnapshot(virtualmachineid=vm_id).get("vmSnapshot", []))


def _consistent(cloud: FaultCloud, vm_id: str) -> None:
    """No snapshot left mid-way; at most one current, and a current one is Ready; a Ready snapshot holds a
    live layer per disk; the VM is Running."""
    snaps = _snaps(cloud, vm_id)
    assert all(s["state"] in ("Ready", "Error") for s in snaps), snaps
    current = [s for s in snaps if s["current"]]
    assert len(current) <= 1 and all(s["state"] == "Ready" for s in current), snaps
    vm = cloud.api().listVirtualMachines(id=vm_id, listall=True)["virtualmachine"][0]
    assert vm["state"] == "Running", vm["state"]
    for s in snaps:
        if s["state"] != "Ready":
            continue
        held = cloud.server.sql(
            "SELECT count(*) FROM vm_snapshot_disks d JOIN layers l ON l.id = d.layer_id "
            "WHERE d.snapshot_id = ? AND d.removed IS NULL AND l.removed IS NULL", s["id"]
        )  # fmt: skip
        assert held == [(1,)], (s["name"], held)


def _cleanup(cloud: FaultCloud, vm_id: str) -> None:
    for s in _snaps(cloud, vm_id):
        cloud.ok(cloud.api().deleteVMSnapshot(vmsnapshotid=s["id"]))


def test_faults_create_vm_snapshot(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud)

    def start() -> str:
        return str(simcloud.api().createVMSnapshot(virtualmachineid=vm["id"], snapshotmemory=True)["jobid"])

    def after_each(step: str, found: Promises) -> None:
        _consistent(simcloud, vm["id"])
        mine = [s for s in _snaps(simcloud, vm["id"]) if s["id"] == found.job.get("jobinstanceid")]
        if found.job["jobstatus"] == 1:
            assert mine and mine[0]["state"] == "Ready" and mine[0]["current"], mine

    run_fault_matrix(simcloud.server, simcloud.api(), simcloud.fault_file, "vmsnapshot.create", start,
                     simcloud.files, after_each)  # fmt: skip
    _cleanup(simcloud, vm["id"])


def test_faults_revert_vm_snapshot(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud)
    snap = simcloud.ok(simcloud.api().createVMSnapshot(virtualmachineid=vm["id"], snapshotmemory=True))["vmsnapshot"]

    def start() -> str:
        return str(simcloud.api().revertToVMSnapshot(vmsnapshotid=snap["id"])["jobid"])

    def after_each(step: str, found: Promises) -> None:
        _consistent(simcloud, vm["id"])
        tops = simcloud.server.sql(
            "SELECT l.parent_id FROM volumes v JOIN layers l ON l.id = v.top_layer_id WHERE v.vm_id = ?", vm["id"]
        )
        frozen = simcloud.server.sql("SELECT layer_id FROM vm_snapshot_disks WHERE snapshot_id = ?", snap["id"])
        assert tops == frozen, (tops, frozen)  # the VM's disk rests on the snapshot either way

    run_fault_matrix(simcloud.server, simcloud.api(), simcloud.fault_file, "vmsnapshot.revert", start,
                     simcloud.files, after_each)  # fmt: skip
    _cleanup(simcloud, vm["id"])


def test_faults_delete_vm_snapshot(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud)
    made: list[str] = []

    def start() -> str:
        snap = simcloud.ok(simcloud.api().createVMSnapshot(virtualmachineid=vm["id"]))["vmsnapshot"]
        made.append(snap["id"])
        return str(simcloud.api().deleteVMSnapshot(vmsnapshotid=snap["id"])["jobid"])

    def after_each(step: str, found: Promises) -> None:
        _consistent(simcloud, vm["id"])
        listed = {s["id"]: s for s in _snaps(simcloud, vm["id"])}
        if found.job["jobstatus"] == 1:
            assert made[-1] not in listed, listed
        else:
            assert made[-1] in listed, (step, found.job)
            saved = simcloud.fault_file.read_text()
            simcloud.fault_file.write_text("")  # the snapshot left is deleted again, without a fault
            _cleanup(simcloud, vm["id"])
            simcloud.fault_file.write_text(saved)

    run_fault_matrix(simcloud.server, simcloud.api(), simcloud.fault_file, "vmsnapshot.delete", start,
                     simcloud.files, after_each)  # fmt: skip
    _cleanup(simcloud, vm["id"])
    chain = simcloud.server.sql(
        "SELECT count(*) FROM layers l JOIN volumes v ON l.volume_id = v.id WHERE v.vm_id = ? AND l.removed IS NULL",
        vm["id"],
    )
    assert chain == [(1,)], chain  # every merge done: the root disk is one layer on its template again
