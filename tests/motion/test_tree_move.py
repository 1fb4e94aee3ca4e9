"""A disk moves with its whole VM snapshot tree, on the simulator through `cs`: a tree of three snapshots
over two branches (A with memory, B; revert to A; C) moves live with migrateVolume, then with the VM to
another host (migrateVirtualMachineWithVolume, layers pulled host to host), then offline with the stopped
VM (migrateVirtualMachine storageid, its config drive with it). After each move the database holds every
layer of the tree on the new pool only, the hosts' files match it, and afterwards each snapshot reverts
and deleting one merges. A move whose copy fails leaves nothing on the target and the tree working."""

from __future__ import annotations

import base64
from typing import Any

from vmcloud import VmCloud, vmcloud  # noqa: F401


def _snap(cloud: VmCloud, vm_id: str, name: str, memory: bool = False) -> dict[str, Any]:
    started = cloud.api().createVMSnapshot(virtualmachineid=vm_id, name=name, snapshotmemory=memory)
    return dict(cloud.ok(started)["vmsnapshot"])


def _tree(cloud: VmCloud, vm_id: str) -> dict[str, dict[str, Any]]:
    """A (memory), B from A; revert to A; C from A. The VM runs on (resumed from A's memory)."""
    a = _snap(cloud, vm_id, "A", memory=True)
    b = _snap(cloud, vm_id, "B")
    cloud.ok(cloud.api().revertToVMSnapshot(vmsnapshotid=a["id"]))
    c = _snap(cloud, vm_id, "C")
    return {"A": a, "B": b, "C": c}


def _layers(cloud: VmCloud, vm_id: str) -> list[tuple[str, str, str]]:
    """(pool id, path, kind) of every live layer of the VM's own (its volumes', its memory files, its
    config drive)."""
    rows = cloud.server.sql(
        "SELECT l.pool_id, l.path, l.kind FROM layers l LEFT JOIN volumes v ON v.id = l.volume_id "
        "WHERE l.removed IS NULL AND (v.vm_id = ? OR l.vm_id = ?)", vm_id, vm_id
    )  # fmt: skip
    return [(str(p), str(path), str(k)) for p, path, k in rows]


def _all_on(cloud: VmCloud, vm_id: str, pool: str, expect_memory: int = 1) -> None:
    """Every layer of the VM's tree is on `pool` (by the database), each snapshot's layers too, and the
    simulated hosts hold exactly the files the database knows of on every pool."""
    rows = [r for r in _layers(cloud, vm_id) if r[2] != "configdrive"]  # it follows its own rule
    assert {r[0] for r in rows} == {cloud.ids[pool]}, rows
    assert len([r for r in rows if r[2] == "memory"]) == expect_memory, rows
    held = cloud.server.sql(
        "SELECT l.pool_id, l.removed FROM vm_snapshot_disks d JOIN layers l ON l.id = d.layer_id "
        "JOIN vm_snapshots s ON s.id = d.snapshot_id WHERE s.vm_id = ? AND d.removed IS NULL", vm_id
    )  # fmt: skip
    assert held and all(p == cloud.ids[pool] and removed is None for p, removed in held), held
    memory = cloud.server.sql(
        "SELECT l.pool_id FROM vm_snapshots s JOIN layers l ON l.id = s.memory_layer_id "
        "WHERE s.vm_id = ? AND s.removed IS NULL AND l.removed IS NULL", vm_id
    )  # fmt: skip
    assert [p for (p,) in memory] == [cloud.ids[pool]] * expect_memory, memory
    _files_match(cloud)


def _files_match(cloud: VmCloud) -> None:
    """No file on any simulated pool that the database does not know, and no known layer missing."""
    known = {
        (str(p), str(path))
        for p, path in cloud.server.sql("SELECT pool_id, path FROM layers WHERE removed IS NULL AND state = 'Ready'")
    }
    pools = {str(p) for (p,) in cloud.server.sql("SELECT id FROM storage_pools")}
    files = {f for f in cloud.files() if f[0] in pools}
    assert files - known == set(), f"files the database does not know: {sorted(files - known)}"
    assert known - files == set(), f"layers without a file: {sorted(known - files)}"


def _reverts(cloud: VmCloud, vm_id: str, snaps: dict[str, dict[str, Any]], pool: str) -> None:
    """Each snapshot reverts (the VM stopped for the Disk ones), its new top on `pool`."""
    cloud.ok(cloud.api().stopVirtualMachine(id=vm_id, forced=True))
    for name in ("B", "C"):
        cloud.ok(cloud.api().revertToVMSnapshot(vmsnapshotid=snaps[name]["id"]))
        listed = {s["name"]: s for s in cloud.api().listVMSnapshot(virtualmachineid=vm_id)["vmSnapshot"]}
        assert listed[name]["current"] is True
        root = cloud.volumes(vm_id)[0]
        assert root["storageid"] == cloud.ids[pool]
    cloud.ok(cloud.api().revertToVMSnapshot(vmsnapshotid=snaps["A"]["id"]))  # memory: the VM runs again
    vm = cloud.api().listVirtualMachines(id=vm_id)["virtualmachine"][0]
    assert vm["state"] == "Running", vm
    _files_match(cloud)


def test_tree_moves_live_then_with_the_vm_then_offline(vmcloud: VmCloud) -> None:  # noqa: F811
    cloud = vmcloud
    started = cloud.api().deployVirtualMachine(
        zoneid=cloud.ids["zone"], serviceofferingid=cloud.ids["local_offering"], templateid=cloud.ids["template"],
        name=cloud.name("tm"), hostid=cloud.ids["host-1"], rootdiskstorageid=cloud.ids["shared1"],
        userdata=base64.b64encode(b"#cloud-config\n").decode(),
    )  # fmt: skip
    cloud.ok(started)
    vm_id = str(started["id"])
    snaps = _tree(cloud, vm_id)
    root = cloud.volumes(vm_id)[0]

    # live, on host-1: shared1 -> host-1's local pool
    ((tree_bytes,),) = cloud.server.sql(
        "SELECT sum(physical_size) FROM layers WHERE removed IS NULL AND (volume_id = ? OR "
        "(vm_id = ? AND kind = 'memory'))", root["id"], vm_id
    )  # fmt: skip
    job = cloud.api().migrateVolume(volumeid=root["id"], storageid=cloud.ids["local-1"], livemigrate=True)
    cloud.ok(job)
    _all_on(cloud, vm_id, "local-1")
    assert cloud.volumes(vm_id)[0]["storageid"] == cloud.ids["local-1"]
    done = cloud.api().queryAsyncJobResult(jobid=job["jobid"])
    assert done["jobprogressdone"] == done["jobprogresstotal"] >= tree_bytes > 0, (done, tree_bytes)

    # with the VM to host-2, root to host-2's local pool (pulled host to host); the config drive stays
    # on shared1, which host-2 reaches
    cloud.ok(cloud.api().migrateVirtualMachineWithVolume(
        virtualmachineid=vm_id, hostid=cloud.ids["host-2"],
        **{"migrateto[0].volume": root["id"], "migrateto[0].pool": cloud.ids["local-2"]},
    ))  # fmt: skip
    assert cloud.api().listVirtualMachines(id=vm_id)["virtualmachine"][0]["hostid"] == cloud.ids["host-2"]
    _all_on(cloud, vm_id, "local-2")
    _reverts(cloud, vm_id, snaps, "local-2")

    # offline, the stopped VM with storageid: every layer, the memory file and the config drive go to shared1
    cloud.ok(cloud.api().stopVirtualMachine(id=vm_id, forced=True))
    cloud.ok(cloud.api().migrateVirtualMachine(virtualmachineid=vm_id, storageid=cloud.ids["shared1"]))
    _all_on(cloud, vm_id, "shared1")
    drive = cloud.server.sql(
        "SELECT pool_id FROM layers WHERE vm_id = ? AND kind = 'configdrive' AND removed IS NULL", vm_id
    )
    assert drive == [(cloud.ids["shared1"],)], drive
    cloud.ok(cloud.api().startVirtualMachine(id=vm_id))
    _reverts(cloud, vm_id, snaps, "shared1")

    # deleting B (no child) removes its layer; deleting A (one child left: C) merges it into C's
    cloud.ok(cloud.api().deleteVMSnapshot(vmsnapshotid=snaps["B"]["id"]))
    cloud.ok(cloud.api().deleteVMSnapshot(vmsnapshotid=snaps["A"]["id"]))
    left = {s["name"] for s in cloud.api().listVMSnapshot(virtualmachineid=vm_id)["vmSnapshot"]}
    assert left == {"C"}
    _all_on(cloud, vm_id, "shared1", expect_memory=0)
    cloud.expunge(vm_id)
    _files_match(cloud)


def test_a_failed_copy_leaves_nothing_and_the_tree_works(vmcloud: VmCloud) -> None:  # noqa: F811
    cloud = vmcloud
    vm = cloud.vm("host-1", "shared1")
    snaps = _tree(cloud, vm["id"])
    root = cloud.volumes(vm["id"])[0]
    before = sorted(_layers(cloud, vm["id"]))
    # the mirror of the top fails: every frozen layer of the tree and the memory file are copied by then
    cloud.configure("host-1", "mirror_disk", fail_count=1, fail_message="target pool full")
    try:
        job = cloud.wait(cloud.api().migrateVolume(volumeid=root["id"], storageid=cloud.ids["local-1"])["jobid"])
    finally:
        cloud.configure("host-1", "mirror_disk", fail_count=0)
    assert job["jobstatus"] == 2, job
    assert sorted(_layers(cloud, vm["id"])) == before
    assert cloud.volumes(vm["id"])[0]["state"] == "Ready"
    assert cloud.api().listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Running"
    _files_match(cloud)
    _reverts(cloud, vm["id"], snaps, "shared1")
    cloud.expunge(vm["id"])


def test_a_hidden_node_moves_and_merges_after_the_move(vmcloud: VmCloud) -> None:  # noqa: F811
    """A deleted while it has two children (B, C) is hidden, its layer kept: it moves with the tree, and
    deleting B afterwards merges A's layer into C's on the new pool."""
    cloud = vmcloud
    vm = cloud.vm("host-1", "shared1")
    snaps = _tree(cloud, vm["id"])
    cloud.ok(cloud.api().stopVirtualMachine(id=vm["id"], forced=True))
    cloud.ok(cloud.api().revertToVMSnapshot(vmsnapshotid=snaps["C"]["id"]))
    cloud.ok(cloud.api().deleteVMSnapshot(vmsnapshotid=snaps["A"]["id"]))
    assert {s["name"] for s in cloud.api().listVMSnapshot(virtualmachineid=vm["id"])["vmSnapshot"]} == {"B", "C"}
    root = cloud.volumes(vm["id"])[0]
    layers = cloud.server.sql("SELECT count(*) FROM layers WHERE volume_id = ? AND removed IS NULL", root["id"])
    job = cloud.api().migrateVolume(volumeid=root["id"], storageid=cloud.ids["local-1"])
    cloud.ok(job)
    rows = cloud.server.sql("SELECT pool_id FROM layers WHERE volume_id = ? AND removed IS NULL", root["id"])
    assert [(len(rows),)] == layers and {p for (p,) in rows} == {cloud.ids["local-1"]}, rows
    _files_match(cloud)
    cloud.ok(cloud.api().deleteVMSnapshot(vmsnapshotid=snaps["B"]["id"]))  # A is left with one child: merged
    assert cloud.server.sql("SELECT count(*) FROM vm_snapshots WHERE vm_id = ? AND removed IS NULL", vm["id"]) == [(1,)]
    cloud.ok(cloud.api().revertToVMSnapshot(vmsnapshotid=snaps["C"]["id"]))
    assert cloud.volumes(vm["id"])[0]["storageid"] == cloud.ids["local-1"]
    _files_match(cloud)
    cloud.expunge(vm["id"])
