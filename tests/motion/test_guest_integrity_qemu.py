"""Storage motion with a real guest writing through it: two QEMU hosts (TCG, the tiny guest), the guest
writing self-checking blocks (strato-integrity) while its disks move through the API, then verifying
every block. Each test reads the guest's verdict from its console on the host it ended on.

Pools: each host's local pool and four cluster pools both hosts mount (a, b, c, d)."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack

from helpers.agentproc import AgentProcess, start_agent
from helpers.faultlib import kill_qemus_under, transitional
from helpers.serverproc import ServerProcess, start_server, wait_job
from helpers.vnc import end_guest_loop
from strato.protocol.messages import GetConsoleLog

pytestmark = [pytest.mark.qemu]

BLOCKS = 192
LOOP_S = 600
"""The ceiling of the guest's write loop: verdict() ends it with a key once the test's moves are done."""


@dataclass
class TwoHosts:
    base: Path
    server: ServerProcess
    agents: dict[str, AgentProcess]
    """host id -> its agent."""
    ids: dict[str, str]
    """zone, host1, host2, local1, local2, a, b, c, d, template, offering, disk."""

    def api(self) -> CloudStack:
        return self.server.cs(timeout=120)

    def ok(self, started: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        job = wait_job(self.api(), started["jobid"], timeout)
        assert job["jobstatus"] == 1, job
        return dict(job.get("jobresult") or {})

    def vm(self, vm_id: str) -> dict[str, Any]:
        return dict(self.api().listVirtualMachines(id=vm_id)["virtualmachine"][0])

    def volumes(self, vm_id: str) -> list[dict[str, Any]]:
        return sorted(self.api().listVolumes(virtualmachineid=vm_id)["volume"], key=lambda v: v["deviceid"])

    def console(self, vm_id: str) -> str:
        vm = self.vm(vm_id)
        agent = self.agents[vm["hostid"]]
        return agent.client(timeout=30).call(GetConsoleLog(name=vm["instancename"], tail_bytes=None)).text

    def wait_console(self, vm_id: str, marker: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.console(vm_id)
            if marker in text:
                return text
            assert time.monotonic() < deadline, f"no {marker!r} on the console:\n{text[-3000:]}"
            time.sleep(1)

    def deploy(self, host: str, root_pool: str, data_pools: list[str], commands: str) -> str:
        args: dict[str, Any] = {
            "zoneid": self.ids["zone"], "serviceofferingid": self.ids["offering"], "templateid": self.ids["template"],
            "name": f"gi-{uuid.uuid4().hex[:6]}", "hostid": self.ids[host], "rootdiskstorageid": self.ids[root_pool],
            "details[0].guestcommands": commands,
        }  # fmt: skip
        for i, pool in enumerate(data_pools):
            args[f"datadisksdetails[{i}].diskofferingid"] = self.ids["disk"]
            args[f"datadisksdetails[{i}].storageid"] = self.ids[pool]
        started = self.api().deployVirtualMachine(**args)
        self.ok(started)
        return str(started["id"])

    def end_loop(self, vm_id: str) -> None:
        """A key pressed on the guest's keyboard (VNC) ends its write loop."""
        vm = self.vm(vm_id)
        end_guest_loop(vm["instancename"], self.agents[vm["hostid"]].data_dir, lambda: self.console(vm_id))

    def verdict(self, vm_id: str, device: str) -> None:
        """The guest's verify of `device` (run after its write loop, ended here) said every block is good."""
        self.end_loop(vm_id)
        text = self.wait_console(vm_id, f"STRATO-RUN-END integrity-verify:{device}", timeout=240)
        assert f"STRATO-RUN-END integrity-verify:{device} rc=0" in text, text[-3000:]
        assert f"STRATO-INTEGRITY OK {BLOCKS} blocks" in text, text[-3000:]

    def nothing_transitional(self) -> None:
        assert transitional(self.server) == []


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoHosts]:
    from strato.image.tiny import default_image_path

    if shutil.which("qemu-system-x86_64") is None or not default_image_path().is_file():
        pytest.skip("QEMU and the tiny guest image are needed")
    base = tmp_path_factory.mktemp("gi")
    server = start_server(base / "server")
    agents: list[AgentProcess] = []
    try:
        for n in (1, 2):
            agents.append(
                start_agent(base / f"a{n}", token=f"gi{n}-{uuid.uuid4().hex[:6]}", driver="qemu", accel="tcg")
            )
        yield _make(base, server, agents)
    finally:
        server.stop()
        for agent in agents:
            agent.stop()
        kill_qemus_under(base)
        shutil.rmtree(base, ignore_errors=True)


def _make(base: Path, server: ServerProcess, agents: list[AgentProcess]) -> TwoHosts:
    from strato.image.tiny import default_image_path

    api = server.cs(timeout=120)
    zone = api.createZone(name=f"gi-{uuid.uuid4().hex[:6]}")["zone"]
    pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM")["cluster"][0]
    ids: dict[str, str] = {"zone": zone["id"]}
    by_host: dict[str, AgentProcess] = {}
    for n, agent in enumerate(agents, start=1):
        host = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"], url=agent.base_url,
                           username="x", password=agent.token, hypervisor="KVM")["host"][0]  # fmt: skip
        ids[f"host{n}"] = host["id"]
        by_host[host["id"]] = agent
        local = api.listStoragePools(zoneid=zone["id"], hostid=host["id"], scope="host")["storagepool"][0]
        ids[f"local{n}"] = local["id"]
    for name in ("a", "b", "c", "d"):
        path = base / f"pool-{name}"
        path.mkdir()
        url = f"SharedMountPoint://localhost{path}"
        pool = api.createStoragePool(name=f"pool-{name}", zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"],
                                     scope="cluster", url=url)["storagepool"]  # fmt: skip
        ids[name] = pool["id"]
    store = base / "store"
    store.mkdir()
    api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store}", zoneid=zone["id"])
    image = base / "tiny.qcow2"
    shutil.copyfile(default_image_path(), image)
    tmpl = api.registerTemplate(name="t", displaytext="t", url=f"file://{image}", format="QCOW2", hypervisor="KVM",
                                zoneid=zone["id"], ostypeid="Other Linux (64-bit)")["template"][0]  # fmt: skip
    assert wait_job(api, tmpl["jobid"], 120)["jobstatus"] == 1
    ids["template"] = tmpl["id"]
    offering = api.createServiceOffering(name="s", displaytext="s", cpunumber=1, cpuspeed=500, memory=128)
    ids["offering"] = offering["serviceoffering"]["id"]
    ids["disk"] = api.createDiskOffering(name="d", displaytext="d", disksize=1)["diskoffering"]["id"]
    return TwoHosts(base, server, by_host, ids)


def _loop(device: str, others: tuple[str, ...] = ()) -> str:
    """Guest commands: write the blocks (on every device), loop rewriting `device`'s, verify them all."""
    items = [f"integrity-write:{d}:{BLOCKS}" for d in (device, *others)]
    items += [f"integrity-loop:{device}:{LOOP_S}"]
    items += [f"integrity-verify:{d}" for d in (device, *others)]
    return ";".join(items)


def test_a_data_disk_and_the_root_disk_move_live_while_the_guest_writes(two_hosts: TwoHosts) -> None:
    cloud, api = two_hosts, two_hosts.api()
    vm_id = cloud.deploy("host1", "a", ["a"], _loop("vdb"))
    try:
        cloud.wait_console(vm_id, "STRATO-INTEGRITY LOOP-START")
        root, data = cloud.volumes(vm_id)
        moved = cloud.ok(api.migrateVolume(volumeid=data["id"], storageid=cloud.ids["b"], livemigrate=True))
        assert moved["volume"]["storageid"] == cloud.ids["b"]
        moved = cloud.ok(api.migrateVolume(volumeid=root["id"], storageid=cloud.ids["local1"], livemigrate=True))
        assert moved["volume"]["storageid"] == cloud.ids["local1"]
        assert "RUN-BEGIN integrity-verify" not in cloud.console(vm_id), "the moves ended after the guest's writes"
        cloud.verdict(vm_id, "vdb")
        assert cloud.vm(vm_id)["state"] == "Running"
        cloud.nothing_transitional()
    finally:
        cloud.ok(api.destroyVirtualMachine(id=vm_id, expunge=True))


def test_three_disks_on_three_pools_move_to_three_others_with_the_vm_to_another_host(two_hosts: TwoHosts) -> None:
    cloud, api = two_hosts, two_hosts.api()
    vm_id = cloud.deploy("host1", "local1", ["a", "b"], _loop("vdb", ("vdc",)))
    try:
        cloud.wait_console(vm_id, "STRATO-INTEGRITY LOOP-START")
        root, data1, data2 = cloud.volumes(vm_id)
        targets = {root["id"]: "local2", data1["id"]: "c", data2["id"]: "d"}
        params: dict[str, str] = {}
        for i, (vol_id, pool) in enumerate(targets.items()):
            params[f"migrateto[{i}].volume"] = vol_id
            params[f"migrateto[{i}].pool"] = cloud.ids[pool]
        moved = cloud.ok(api.migrateVirtualMachineWithVolume(virtualmachineid=vm_id, hostid=cloud.ids["host2"],
                                                             **params))["virtualmachine"]  # fmt: skip
        assert moved["hostid"] == cloud.ids["host2"] and moved["state"] == "Running"
        now = {v["id"]: v["storageid"] for v in cloud.volumes(vm_id)}
        assert now == {vol_id: cloud.ids[pool] for vol_id, pool in targets.items()}
        cloud.verdict(vm_id, "vdb")
        text = cloud.console(vm_id)
        assert "STRATO-RUN-END integrity-verify:vdc rc=0" in cloud.wait_console(vm_id, "integrity-verify:vdc rc="), text
        cloud.nothing_transitional()
    finally:
        cloud.ok(api.destroyVirtualMachine(id=vm_id, expunge=True))


def test_storage_maintenance_moves_a_writing_guests_disks_live(two_hosts: TwoHosts) -> None:
    cloud, api = two_hosts, two_hosts.api()
    vm_id = cloud.deploy("host1", "c", ["c"], _loop("vdb"))
    try:
        cloud.wait_console(vm_id, "STRATO-INTEGRITY LOOP-START")
        done = cloud.ok(api.enableStorageMaintenance(id=cloud.ids["c"]))
        assert done["storagepool"]["state"] == "Maintenance"
        assert all(v["storageid"] != cloud.ids["c"] for v in cloud.volumes(vm_id))
        assert cloud.vm(vm_id)["state"] == "Running"
        cloud.verdict(vm_id, "vdb")
        cloud.nothing_transitional()
    finally:
        cloud.ok(api.cancelStorageMaintenance(id=cloud.ids["c"]))
        cloud.ok(api.destroyVirtualMachine(id=vm_id, expunge=True))


def test_host_maintenance_moves_a_writing_guest_with_its_local_disk(two_hosts: TwoHosts) -> None:
    cloud, api = two_hosts, two_hosts.api()
    vm_id = cloud.deploy("host1", "local1", ["d"], _loop("vdb"))
    try:
        cloud.wait_console(vm_id, "STRATO-INTEGRITY LOOP-START")
        done = cloud.ok(api.prepareHostForMaintenance(id=cloud.ids["host1"]))
        assert done["host"]["resourcestate"] == "Maintenance"
        vm = cloud.vm(vm_id)
        assert vm["hostid"] == cloud.ids["host2"] and vm["state"] == "Running"
        root = cloud.volumes(vm_id)[0]
        assert root["storageid"] == cloud.ids["local2"]
        cloud.verdict(vm_id, "vdb")
        cloud.nothing_transitional()
    finally:
        cloud.ok(api.cancelHostMaintenance(id=cloud.ids["host1"]))
        cloud.ok(api.destroyVirtualMachine(id=vm_id, expunge=True))
