"""Hibernate on a simulated cloud, through `cs`: hibernateVirtualMachine leaves the VM Hibernated with its
memory file on the root disk's pool (counted in the pool's used space, no host memory), start resumes it
from the file (the simulator's restore_vm) and the file goes; the rules refused while hibernated; destroy
removes the file; createVMSnapshot quiescevm=true refused with 431."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from strato.protocol.messages import ConfigureSimulator

_TESTS = Path(__file__).resolve().parents[1]
for extra in (str(_TESTS), str(_TESTS / "engine")):
    if extra not in sys.path:
        sys.path.insert(0, extra)

from simcloud import simulated_cloud  # noqa: E402
from test_vm_snapshots import Cloud, _error  # noqa: E402

from helpers.agentproc import AgentProcess, start_agent  # noqa: E402
from helpers.serverproc import start_server  # noqa: E402


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    base = tmp_path_factory.mktemp("hibernate")
    server = start_server(base / "server")
    agent: AgentProcess | None = None
    try:
        agent = start_agent(base / "agent", token=f"t-{uuid.uuid4().hex[:8]}", driver="simulator")
        yield Cloud(server, agent, simulated_cloud(server.cs(timeout=60), agent, base / "store"))
    finally:
        server.stop()
        if agent is not None:
            agent.stop()
        shutil.rmtree(base, ignore_errors=True)


def _memory_files(cloud: Cloud, vm_id: str) -> list[str]:
    return sorted(n for n in cloud.records() if n.startswith(f"hibernate/{vm_id}/"))


def _memory_rows(cloud: Cloud, vm_id: str) -> list[tuple[Any, ...]]:
    return cloud.server.sql(
        "SELECT path, physical_size FROM layers WHERE vm_id = ? AND kind = 'memory' AND removed IS NULL", vm_id
    )


def _pool_used(cloud: Cloud) -> int:
    return int(cloud.api.listStoragePools()["storagepool"][0]["disksizeallocated"])


def _host_memory(cloud: Cloud) -> int:
    return int(cloud.api.listCapacity(type=0)["capacity"][0]["capacityused"])


def test_hibernate_then_start_resumes_and_removes_the_file(cloud: Cloud) -> None:
    vm = cloud.deploy()
    used_before, host_mem_before = _pool_used(cloud), _host_memory(cloud)
    assert "hibernateVirtualMachine" in {a["name"] for a in cloud.api.listApis(name="hibernateVirtualMachine")["api"]}
    result = cloud.ok(cloud.api.hibernateVirtualMachine(id=vm["id"]))
    assert result["virtualmachine"]["state"] == "Hibernated"
    assert cloud.vm(vm["id"])["state"] == "Hibernated" and "hostid" not in cloud.vm(vm["id"])
    rows = _memory_rows(cloud, vm["id"])
    assert len(rows) == 1 and _memory_files(cloud, vm["id"]) == [rows[0][0]], (rows, _memory_files(cloud, vm["id"]))
    assert _pool_used(cloud) == used_before + int(rows[0][1])  # the pool counts the memory file
    assert _host_memory(cloud) == host_mem_before - 128 * 1024 * 1024  # the host holds none of it

    code, text = _error(lambda: cloud.api.hibernateVirtualMachine(id=vm["id"]))
    assert code == 431 and "Hibernated" in text, text  # already hibernated (InvalidState is 431 here)
    started = cloud.ok(cloud.api.startVirtualMachine(id=vm["id"]))
    assert started["virtualmachine"]["state"] == "Running"
    assert _memory_rows(cloud, vm["id"]) == [] and _memory_files(cloud, vm["id"]) == []
    assert _pool_used(cloud) == used_before
    log = cloud.server.sql("SELECT count(*) FROM layers WHERE vm_id = ? AND kind = 'memory'", vm["id"])
    assert log == [(1,)]  # one memory file made, and gone (removed) after the resume
    cloud.ok(cloud.api.stopVirtualMachine(id=vm["id"]))
    code, text = _error(lambda: cloud.api.hibernateVirtualMachine(id=vm["id"]))
    assert code == 431 and "Stopped" in text, text  # a stopped VM has no memory to save
    cloud.ok(cloud.api.destroyVirtualMachine(id=vm["id"], expunge=True))


def test_rules_while_hibernated_and_destroy_removes_the_file(cloud: Cloud) -> None:
    vm = cloud.deploy()
    vol, data = (
        cloud.api.createVolume(
            name=f"d-{uuid.uuid4().hex[:4]}", zoneid=cloud.ids["zone"], diskofferingid=cloud.ids["disk_offering"]
        )
        for _ in range(2)
    )
    cloud.ok(vol)
    cloud.ok(data)
    cloud.ok(cloud.api.attachVolume(id=data["id"], virtualmachineid=vm["id"]))
    cloud.ok(cloud.api.hibernateVirtualMachine(id=vm["id"]))
    root = next(v for v in cloud.api.listVolumes(virtualmachineid=vm["id"], listall=True)["volume"]
                if v["type"] == "ROOT")  # fmt: skip
    offering = cloud.api.createServiceOffering(name="s2", displaytext="s2", cpunumber=1, cpuspeed=1000, memory=256,
                                               storagetype="local")["serviceoffering"]  # fmt: skip
    pool = cloud.api.listStoragePools()["storagepool"][0]["id"]
    refusals = {
        "attachVolume": lambda: cloud.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"]),
        "detachVolume": lambda: cloud.api.detachVolume(id=data["id"]),
        "resizeVolume": lambda: cloud.api.resizeVolume(id=root["id"], size=4),
        "scaleVirtualMachine": lambda: cloud.api.scaleVirtualMachine(id=vm["id"], serviceofferingid=offering["id"]),
        "migrateVirtualMachine": lambda: cloud.api.migrateVirtualMachine(
            virtualmachineid=vm["id"], hostid=cloud.ids["host"]
        ),
        "migrateVolume": lambda: cloud.api.migrateVolume(volumeid=root["id"], storageid=pool),
        "migrateVirtualMachineWithVolume": lambda: cloud.api.migrateVirtualMachineWithVolume(
            virtualmachineid=vm["id"], hostid=cloud.ids["host"]
        ),
        "createVMSnapshot": lambda: cloud.api.createVMSnapshot(virtualmachineid=vm["id"]),
        "stopVirtualMachine": lambda: cloud.api.stopVirtualMachine(id=vm["id"]),
        "rebootVirtualMachine": lambda: cloud.api.rebootVirtualMachine(id=vm["id"]),
    }
    for name, call in refusals.items():
        code, text = _error(call)
        assert code == 431 and "Hibernated" in text, (name, code, text)
        assert cloud.vm(vm["id"])["state"] == "Hibernated", name
    assert len(_memory_files(cloud, vm["id"])) == 1
    assert cloud.api.listVolumes(virtualmachineid=vm["id"], listall=True)["count"] == 2  # nothing changed

    cloud.ok(cloud.api.destroyVirtualMachine(id=vm["id"]))
    assert cloud.vm(vm["id"])["state"] == "Destroyed"
    assert _memory_files(cloud, vm["id"]) == [] and _memory_rows(cloud, vm["id"]) == []
    cloud.api.recoverVirtualMachine(id=vm["id"])
    assert cloud.vm(vm["id"])["state"] == "Stopped"  # a recovered VM boots from its disks
    cloud.ok(cloud.api.destroyVirtualMachine(id=vm["id"], expunge=True))
    for v in (vol, data):
        cloud.api.deleteVolume(id=v["id"])


def test_failed_resume_leaves_the_vm_hibernated(cloud: Cloud) -> None:
    """A failed save leaves the VM running and no file; a start whose resume fails (the simulator fails
    restore_vm) keeps the file and the VM Hibernated; the next start resumes it."""
    vm = cloud.deploy()
    cloud.agent.client().call(ConfigureSimulator(command="save_vm", fail_count=1, fail_message="pool full"))
    code, text = cloud.fails(cloud.api.hibernateVirtualMachine(id=vm["id"]))
    assert "pool full" in text, (code, text)
    assert cloud.vm(vm["id"])["state"] == "Running" and _memory_files(cloud, vm["id"]) == []
    assert _memory_rows(cloud, vm["id"]) == []
    cloud.ok(cloud.api.hibernateVirtualMachine(id=vm["id"]))
    files = _memory_files(cloud, vm["id"])
    cloud.agent.client().call(ConfigureSimulator(command="restore_vm", fail_count=1, fail_message="memory unreadable"))
    code, text = cloud.fails(cloud.api.startVirtualMachine(id=vm["id"]))
    assert "memory unreadable" in text, (code, text)
    assert cloud.vm(vm["id"])["state"] == "Hibernated" and _memory_files(cloud, vm["id"]) == files
    cloud.ok(cloud.api.startVirtualMachine(id=vm["id"]))
    assert cloud.vm(vm["id"])["state"] == "Running" and _memory_files(cloud, vm["id"]) == []
    cloud.ok(cloud.api.destroyVirtualMachine(id=vm["id"], expunge=True))


def test_quiescevm_refused(cloud: Cloud) -> None:
    vm = cloud.deploy(start=False)
    code, text = _error(lambda: cloud.api.createVMSnapshot(virtualmachineid=vm["id"], quiescevm=True))
    assert code == 431 and "quiescevm" in text, text
    assert cloud.snaps(vm["id"]) == {}  # nothing made
    snap = cloud.snap(vm["id"], "q-off")  # quiescevm=false is what is done anyway
    cloud.delete(snap["id"])
    cloud.ok(cloud.api.destroyVirtualMachine(id=vm["id"], expunge=True))


def test_snapshots_of_a_hibernated_vm_are_deleted_offline_and_it_resumes(cloud: Cloud) -> None:
    """deleteVMSnapshot while Hibernated merges offline as for a stopped VM (a node with one child, then
    the node the VM's present state rests on); the memory file stays, and the VM resumes from it."""
    vm = cloud.deploy()
    s1 = cloud.snap(vm["id"], "h1")
    s2 = cloud.snap(vm["id"], "h2")
    cloud.ok(cloud.api.hibernateVirtualMachine(id=vm["id"]))
    saved = _memory_files(cloud, vm["id"])
    cloud.delete(s1["id"])  # merges into h2's layer
    cloud.check_chains(vm["id"])
    cloud.delete(s2["id"])  # merges into the VM's present top
    cloud.check_chains(vm["id"])
    assert cloud.snaps(vm["id"]) == {} and _memory_files(cloud, vm["id"]) == saved
    assert cloud.vm(vm["id"])["state"] == "Hibernated"
    started = cloud.ok(cloud.api.startVirtualMachine(id=vm["id"]))
    assert started["virtualmachine"]["state"] == "Running" and _memory_files(cloud, vm["id"]) == []
    cloud.check_chains(vm["id"])
    cloud.ok(cloud.api.destroyVirtualMachine(id=vm["id"], expunge=True))
