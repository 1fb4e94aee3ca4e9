"""VM snapshots on real QEMU (TCG, the tiny guest): the guest writes generation 1 of its integrity blocks on
its data disk, snapshots are taken (disk only, and with memory), it writes generation 2, another snapshot.
Reverting (VM stopped) leaves the disk verifying as generation 1 only, the other branch as generation 2;
reverting to the memory snapshot resumes the guest where it was (its console shows no boot), and deleting
a snapshot merges its layers live into the running chain."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack

from helpers.agentproc import AgentProcess, start_agent
from helpers.faultlib import kill_qemus_under
from helpers.serverproc import ServerProcess, start_server, wait_job
from strato.image.integrity import verify_image
from strato.protocol.messages import GetConsoleLog

pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("qemu-vm-snapshots")]

BLOCKS = 16


class One:
    def __init__(self, base: Path, server: ServerProcess, agent: AgentProcess, ids: dict[str, str]) -> None:
        self.base, self.server, self.agent, self.ids = base, server, agent, ids

    def api(self) -> CloudStack:
        return self.server.cs(timeout=120)

    def ok(self, started: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
        job = wait_job(self.api(), started["jobid"], timeout)
        assert job["jobstatus"] == 1, (job["cmd"], job.get("jobresult"))
        return dict(job.get("jobresult") or {})

    def console(self, vm: dict[str, Any]) -> str:
        return self.agent.client(timeout=30).call(GetConsoleLog(name=vm["instancename"], tail_bytes=None)).text

    def wait_console(self, vm: dict[str, Any], marker: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.console(vm)
            if marker in text:
                return text
            assert time.monotonic() < deadline, f"no {marker!r} on the console:\n{text[-3000:]}"
            time.sleep(0.5)

    def data_disk_file(self, vm_id: str) -> Path:
        vol = next(v for v in self.api().listVolumes(virtualmachineid=vm_id)["volume"] if v["type"] == "DATADISK")
        (path,) = self.server.sql(
            "SELECT p.path, l.path FROM volumes v JOIN layers l ON l.id = v.top_layer_id "
            "JOIN storage_pools p ON p.id = l.pool_id WHERE v.id = ?", vol["id"]
        )  # fmt: skip
        return Path(path[0]) / path[1]

    def generations(self, vm_id: str) -> set[int]:
        report = verify_image(self.data_disk_file(vm_id))
        assert report.ok, report.summary()
        return set(report.generations.values())


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[One]:
    from strato.image.tiny import default_image_path

    if shutil.which("qemu-system-x86_64") is None or not default_image_path().is_file():
        pytest.skip("QEMU and the tiny guest image are needed")
    base = tmp_path_factory.mktemp("vsq")
    server = start_server(base / "server")
    agent: AgentProcess | None = None
    try:
        agent = start_agent(base / "agent", token=f"vs-{uuid.uuid4().hex[:6]}", driver="qemu", accel="tcg")
        api = server.cs(timeout=120)
        zone = api.createZone(name=f"vs-{uuid.uuid4().hex[:6]}")["zone"]
        pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
        cluster = api.addCluster(clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM")["cluster"][0]
        api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"], url=agent.base_url, username="x",
                    password=agent.token, hypervisor="KVM")  # fmt: skip
        shared = base / "shared"
        shared.mkdir()
        api.createStoragePool(name="shared", zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"],
                              scope="cluster", url=f"SharedMountPoint://localhost{shared}")  # fmt: skip
        store = base / "store"
        store.mkdir()
        api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store}", zoneid=zone["id"])
        image = base / "tiny.qcow2"
        shutil.copyfile(default_image_path(), image)
        tmpl = api.registerTemplate(
            name="t", displaytext="t", url=f"file://{image}", format="QCOW2", hypervisor="KVM", zoneid=zone["id"]
        )["template"][0]
        assert wait_job(api, tmpl["jobid"], 120)["jobstatus"] == 1
        offering = api.createServiceOffering(name="s", displaytext="s", cpunumber=1, cpuspeed=500, memory=128)
        disk = api.createDiskOffering(name="d", displaytext="d", disksize=1)["diskoffering"]
        ids = {"zone": zone["id"], "template": tmpl["id"], "offering": offering["serviceoffering"]["id"],
               "disk": disk["id"]}  # fmt: skip
        yield One(base, server, agent, ids)
    finally:
        server.stop()
        if agent is not None:
            agent.stop()
        kill_qemus_under(base)
        shutil.rmtree(base, ignore_errors=True)


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
