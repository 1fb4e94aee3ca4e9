"""migrateVolume stopped after each of its steps, then recovered (the step-fault matrix): the three
promises hold, and what the user sees is consistent with the job's outcome: before the commit points
(the pivot of a live move, the database switch) the volume is back on its source pool, Ready, its VM
running on the source layer; after them the volume is on the target pool and the source files are gone.
Each run moves the volume to the pool it is not on, so runs alternate direction."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from motionlib import deploy, new_volume, other_pool, root_of, vm_of, vol_of

from helpers.faultlib import Promises, run_fault_matrix

Cloud = Any
KIND = "volume.migrate"


def _top(cloud: Cloud, vol_id: str) -> tuple[str, str]:
    pool, path = cloud.server.sql(
        "SELECT l.pool_id, l.path FROM volumes v JOIN layers l ON l.id = v.top_layer_id WHERE v.id = ?", vol_id
    )[0]
    return str(pool), str(path)


def _agent_disk(cloud: Cloud, vm: dict[str, Any], device_id: int) -> tuple[str, str]:
    state = json.loads((cloud.agent.data_dir / "simulator-state.json").read_text())
    disk = next(d for d in state["vms"][vm["instancename"]]["spec"]["disks"] if d["device_id"] == device_id)
    return str(disk["layer"]["pool"]["id"]), str(disk["layer"]["name"])


def _matrix(
    cloud: Cloud, vol_id: str, vm_id: str | None, live: bool, also: Callable[[str], None] | None = None
) -> list[str]:
    moves: list[tuple[str, str]] = []  # (from, to) of each run

    def start() -> str:
        vol = vol_of(cloud, vol_id)
        target = other_pool(cloud, vol)
        moves.append((vol["storageid"], target))
        return str(cloud.api().migrateVolume(volumeid=vol_id, storageid=target)["jobid"])

    def check(step: str, found: Promises) -> None:
        source, target = moves[-1]
        vol = vol_of(cloud, vol_id)
        expected = target if found.job["jobstatus"] == 1 else source
        assert (vol["state"], vol["storageid"]) == ("Ready", expected), (step, vol, found.job)
        top_pool, top_path = _top(cloud, vol_id)
        assert top_pool == expected
        assert (top_pool, top_path) in cloud.files(), f"the volume's top layer has no file after {step}"
        if vm_id is not None:
            vm = vm_of(cloud, vm_id)
            assert vm["state"] == ("Running" if live else "Stopped"), vm
            if live:
                device = int(vol["deviceid"])
                assert _agent_disk(cloud, vm, device) == (top_pool, top_path), "the VM's disk is not the volume's"
        if also is not None:
            also(step)

    return run_fault_matrix(cloud.server, cloud.api(), cloud.fault_file, KIND, start, cloud.files, after_each=check)


LIVE_STEPS = [
    "mark migrating",
    "plan target chain",
    "copy frozen layers",
    "rebase copies",
    "mirror top layer",
    "switch database",
    "remove source layers",
    "end migrating",
]
OFFLINE_STEPS = [s if s != "mirror top layer" else "copy top layer" for s in LIVE_STEPS]


def test_live_move_of_a_data_disk_on_the_simulator(simcloud: Cloud) -> None:
    vm = deploy(simcloud, start=True)
    vol = new_volume(simcloud, pool=simcloud.ids["local"], virtualmachineid=vm["id"])
    assert _matrix(simcloud, vol["id"], vm["id"], live=True) == LIVE_STEPS


def test_live_move_of_a_linked_clones_root_disk_on_the_simulator(simcloud: Cloud) -> None:
    vm = deploy(simcloud, start=True)
    root = root_of(simcloud, vm["id"])
    assert _matrix(simcloud, root["id"], vm["id"], live=True) == LIVE_STEPS


def test_offline_move_of_a_detached_volume_on_the_simulator(simcloud: Cloud) -> None:
    vol = new_volume(simcloud, pool=simcloud.ids["local"])
    assert _matrix(simcloud, vol["id"], None, live=False) == OFFLINE_STEPS


def test_offline_move_of_a_stopped_vms_root_disk_on_the_simulator(simcloud: Cloud) -> None:
    vm = deploy(simcloud, start=True)
    simcloud.ok(simcloud.api().stopVirtualMachine(id=vm["id"]))
    root = root_of(simcloud, vm["id"])
    assert _matrix(simcloud, root["id"], vm["id"], live=False) == OFFLINE_STEPS


def test_live_move_of_a_root_disk_with_a_snapshot_tree_on_the_simulator(simcloud: Cloud) -> None:
    """A (with memory), B; revert to A; C: after every faulted step each snapshot's layer and the memory
    file are live on the pool the volume is on, and the files match the database (the matrix's promise)."""
    api = simcloud.api()
    vm = deploy(simcloud, start=True)
    snaps = []
    for name, memory in (("A", True), ("B", False)):
        snaps.append(simcloud.ok(api.createVMSnapshot(virtualmachineid=vm["id"], name=name, snapshotmemory=memory)))
    simcloud.ok(api.revertToVMSnapshot(vmsnapshotid=snaps[0]["vmsnapshot"]["id"]))
    simcloud.ok(api.createVMSnapshot(virtualmachineid=vm["id"], name="C"))
    root = root_of(simcloud, vm["id"])

    def tree_pools() -> set[str]:
        held = simcloud.server.sql(
            "SELECT l.pool_id FROM vm_snapshot_disks d JOIN layers l ON l.id = d.layer_id "
            "WHERE d.volume_id = ? AND d.removed IS NULL AND l.removed IS NULL", root["id"]
        )  # fmt: skip
        memory = simcloud.server.sql(
            "SELECT l.pool_id FROM vm_snapshots s JOIN layers l ON l.id = s.memory_layer_id "
            "WHERE s.vm_id = ? AND s.removed IS NULL AND l.removed IS NULL", vm["id"]
        )  # fmt: skip
        assert len(held) == 3 and len(memory) == 1, (held, memory)
        return {str(p) for (p,) in held + memory}

    checked: list[str] = []

    def after(step: str) -> None:
        assert tree_pools() == {vol_of(simcloud, root["id"])["storageid"]}, step
        checked.append(step)

    assert _matrix(simcloud, root["id"], vm["id"], live=True, also=after) == LIVE_STEPS
    assert len(checked) >= len(LIVE_STEPS)
