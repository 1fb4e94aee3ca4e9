"""VM snapshots on real QEMU (TCG, the tiny guest): the guest writes generation 1 of its integrity blocks on
its data disk, snapshots are taken (disk only, and with memory), it writes generation 2, another snapshot.
Reverting (VM stopped) leaves the disk verifying as generation 1 only, the other branch as generation 2;
reverting to the memory snapshot resumes the guest where it was (its console shows no boot), and deleting
a snapshot merges its layers live into the running chain."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
from qemuone import One, one_qemu_host

from helpers.agentproc import start_agent
from helpers.serverproc import wait_job
from strato.protocol.messages import GetVm, PowerState

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


def _restart_agent(one: One, env: dict[str, str]) -> None:
    """kill -9 the host's agent (its QEMUs run on) and start it again on the same port and data."""
    old = one.agent
    old.kill()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        one.agent = start_agent(old.data_dir, token=old.token, driver="qemu", accel="tcg", port=old.port)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _host_up(one: One) -> None:
    deadline = time.monotonic() + 90
    while one.api().listHosts(type="Routing")["host"][0]["state"] != "Up":
        assert time.monotonic() < deadline, "the host did not come back Up after its agent restarted"
        time.sleep(0.5)


def test_agent_killed_while_the_memory_is_written_leaves_the_guest_running(one: One) -> None:
    """The agent dies (-9) while a memory snapshot writes the RAM: the new agent life cancels the save
    QEMU was still making (or the guest would stay paused at pre-switchover) and removes the new tops and
    the partial memory file; the job fails naming the host, the snapshot is Error, no file is left that
    the database does not know, the guest runs on, and the next memory snapshot works."""
    _restart_agent(one, {"STRATO_MEMORY_SAVE_BANDWIDTH": str(1024 * 1024)})  # hold the save in its live phase
    vm_id = ""
    _host_up(one)
    try:
        started = one.api().deployVirtualMachine(zoneid=one.ids["zone"], serviceofferingid=one.ids["offering"],
                                                 templateid=one.ids["template"], name=f"vk-{uuid.uuid4().hex[:6]}",
                                                 **{"details[0].guestcommands": "sleep:600"})  # fmt: skip
        vm_id = started["id"]
        deployed = wait_job(one.api(), started["jobid"], 180)
        assert deployed["jobstatus"] == 1, deployed.get("jobresult")
        vm = one.api().listVirtualMachines(id=vm_id)["virtualmachine"][0]
        one.wait_console(vm, "STRATO-RUN-BEGIN sleep:600")
        job = one.api().createVMSnapshot(virtualmachineid=vm_id, snapshotmemory=True, name="cut")
        deadline = time.monotonic() + 60
        while "memory" not in str(one.api().queryAsyncJobResult(jobid=job["jobid"]).get("jobprogressphase", "")):
            assert time.monotonic() < deadline, one.api().queryAsyncJobResult(jobid=job["jobid"])
            time.sleep(0.2)
        _restart_agent(one, {})
        found = wait_job(one.api(), job["jobid"], 180)
        assert found["jobstatus"] == 2 and found["jobresult"]["errorcode"] == 534, found
        [snap] = one.api().listVMSnapshot(virtualmachineid=vm_id)["vmSnapshot"]
        assert snap["state"] == "Error" and snap["name"] == "cut", snap
        report = one.agent.client(timeout=30).call(GetVm(name=vm["instancename"]))
        assert report.power_state == PowerState.RUNNING, report  # not left paused at pre-switchover
        live = {str(p) for (p,) in one.server.sql("SELECT path FROM layers WHERE removed IS NULL")}
        on_disk = {str(f.relative_to(one.base / "shared")) for f in (one.base / "shared").rglob("*") if f.is_file()}
        assert on_disk <= live, f"files the database does not know: {on_disk - live}"
        # QEMU is not stuck in the old migration: the next memory snapshot is taken.
        _host_up(one)
        again = one.ok(one.api().createVMSnapshot(virtualmachineid=vm_id, snapshotmemory=True, name="whole"))
        assert again["vmsnapshot"]["type"] == "DiskAndMemory" and again["vmsnapshot"]["state"] == "Ready"
    finally:
        if vm_id:
            one.ok(one.api().destroyVirtualMachine(id=vm_id, expunge=True))
