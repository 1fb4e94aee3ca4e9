"""VM snapshots on real QEMU (TCG, the tiny guest): the guest writes generation 1 of its integrity blocks on
its data disk, snapshots are taken (disk only, and with memory), it writes generation 2, another snapshot.
Reverting (VM stopped) leaves the disk verifying as generation 1 only, the other branch as generation 2;
reverting to the memory snapshot resumes the guest where it was (its console shows no boot), and deleting
a snapshot merges its layers live into the running chain."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from qemuone import One, one_qemu_host

from helpers.serverproc import wait_job

pytestmark = [pytest.mark.qemu]

BLOCKS = 16


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[One]:
    with one_qemu_host(tmp_path_factory.mktemp("vsq"), "vs") as cloud:
        yield cloud


def test_revert_gives_each_branch_its_generation_and_memory_resumes(one: One) -> None:
    commands = f"integrity-write:vdb:{BLOCKS};sleep:25;integrity-loop:vdb:60:{BLOCKS};sleep:600"
    started = one.api().deployVirtualMachine(zoneid=one.ids["zone"], serviceofferingid=one.ids["offering"],
                                             templateid=one.ids["template"], diskofferingid=one.ids["disk"],
                                             name=f"vs-{uuid.uuid4().hex[:6]}",
                                             **{"details[0].guestcommands": commands})  # fmt: skip
    job = wait_job(one.api(), started["jobid"], 180)
    assert job["jobstatus"] == 1, job.get("jobresult")
    vm = one.api().listVirtualMachines(id=started["id"])["virtualmachine"][0]
    one.wait_console(vm, f"STRATO-RUN-END integrity-write:vdb:{BLOCKS} rc=0")
    gen1 = one.ok(one.api().createVMSnapshot(virtualmachineid=vm["id"], name="gen1"))["vmsnapshot"]
    mem = one.ok(one.api().createVMSnapshot(virtualmachineid=vm["id"], name="mem", snapshotmemory=True))
    assert mem["vmsnapshot"]["type"] == "DiskAndMemory"
    one.wait_console(vm, "STRATO-INTEGRITY LOOP-DONE", timeout=120)
    gen2 = one.ok(one.api().createVMSnapshot(virtualmachineid=vm["id"], name="gen2"))["vmsnapshot"]
    one.ok(one.api().stopVirtualMachine(id=vm["id"], forced=True))

    one.ok(one.api().revertToVMSnapshot(vmsnapshotid=gen1["id"]))
    assert one.api().listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Stopped"
    assert one.generations(vm["id"]) == {1}
    one.ok(one.api().revertToVMSnapshot(vmsnapshotid=gen2["id"]))
    assert one.generations(vm["id"]) == {2}

    # The memory snapshot: the guest runs on from its sleep after the first write, without booting.
    one.ok(one.api().revertToVMSnapshot(vmsnapshotid=mem["vmsnapshot"]["id"]))
    vm = one.api().listVirtualMachines(id=vm["id"])["virtualmachine"][0]
    assert vm["state"] == "Running"
    text = one.wait_console(vm, "STRATO-RUN-END sleep:25 rc=0", timeout=90)
    assert "STRATO-TINY-BOOTED" not in text, text[-2000:]

    # mem's parent (gen1) has one child: its layers merge live into the running chain.
    one.ok(one.api().deleteVMSnapshot(vmsnapshotid=gen1["id"]))
    left = {s["name"]: s for s in one.api().listVMSnapshot(virtualmachineid=vm["id"])["vmSnapshot"]}
    assert set(left) == {"mem", "gen2"} and left["mem"]["current"] and "parent" not in left["mem"]
    assert one.api().listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Running"
    one.ok(one.api().destroyVirtualMachine(id=vm["id"], expunge=True))
    assert one.server.sql("SELECT count(*) FROM layers WHERE removed IS NULL AND kind = 'memory'") == [(0,)]
    live = {
        str(i): p
        for i, p in one.server.sql("SELECT id, parent_id FROM layers WHERE removed IS NULL AND kind = 'volume'")
    }
    reachable: set[str] = set()
    for (top,) in one.server.sql("SELECT top_layer_id FROM volumes WHERE removed IS NULL AND top_layer_id IS NOT NULL"):
        while top in live:
            reachable.add(top)
            top = live[top]
    assert set(live) == reachable, "layers of no volume's chain are left"  # the data disk keeps its chain
