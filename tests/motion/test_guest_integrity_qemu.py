"""Storage motion with a real guest writing through it: two QEMU hosts (TCG, the tiny guest), the guest
writing self-checking blocks (strato-integrity) while its disks move through the API, then verifying
every block. Each test reads the guest's verdict from its console on the host it ended on.

A VM with a snapshot tree (two branches, a memory snapshot) moves live, with the VM and offline; each
snapshot's layer is read on the host for the generation it must hold.

Pools: each host's local pool and four cluster pools both hosts mount (a, b, c, d)."""

from __future__ import annotations

import base64
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
        assert job["jobstatus"] == 1, (job["cmd"], job.get("jobresult"))
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

    def deploy(
        self, host: str, root_pool: str, data_pools: list[str], commands: str, userdata: str | None = None
    ) -> str:
        args: dict[str, Any] = {
            "zoneid": self.ids["zone"], "serviceofferingid": self.ids["offering"], "templateid": self.ids["template"],
            "name": f"gi-{uuid.uuid4().hex[:6]}", "hostid": self.ids[host], "rootdiskstorageid": self.ids[root_pool],
            "details[0].guestcommands": commands,
        }  # fmt: skip
        if userdata is not None:
            args["userdata"] = base64.b64encode(userdata.encode()).decode()
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


# --- a disk with its VM snapshot tree --------------------------------------------------------------------

TREE = "integrity-write:vdb:16;sleep:25;integrity-loop:vdb:600:16;sleep:25;integrity-loop:vdb:600:16;sleep:900"
"""Generation 1 (snapshot A, with memory, in the first sleep), 2 after the first loop (B, in the second),
3 after the second. Resumed from A the guest runs both loops again: C, on that branch, holds 3."""
LOOP_END = "STRATO-RUN-END integrity-loop:vdb:600:16 rc=0"


def _wait_count(cloud: TwoHosts, vm_id: str, marker: str, count: int, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = cloud.console(vm_id)
        if text.count(marker) >= count:
            return text
        assert time.monotonic() < deadline, f"{marker!r} not {count} times on the console:\n{text[-3000:]}"
        time.sleep(1)


def _file(cloud: TwoHosts, layer_id: str) -> tuple[str, Path]:
    ((pool_id, pool_path, path),) = cloud.server.sql(
        "SELECT p.id, p.path, l.path FROM layers l JOIN storage_pools p ON p.id = l.pool_id WHERE l.id = ?", layer_id
    )
    return str(pool_id), Path(pool_path) / path


def _snapshot_generations(cloud: TwoHosts, vm_id: str, data_id: str) -> dict[str, tuple[str, set[int]]]:
    """Per snapshot name: the pool of its data-disk layer and the generations that layer (with its backing
    chain, as qemu-img reads it) holds."""
    from strato.image.integrity import verify_image

    out: dict[str, tuple[str, set[int]]] = {}
    for name, layer_id in cloud.server.sql(
        "SELECT s.name, d.layer_id FROM vm_snapshot_disks d JOIN vm_snapshots s ON s.id = d.snapshot_id "
        "WHERE s.vm_id = ? AND d.volume_id = ? AND d.removed IS NULL AND s.removed IS NULL", vm_id, data_id
    ):  # fmt: skip
        pool_id, path = _file(cloud, str(layer_id))
        report = verify_image(path)
        assert report.ok, (name, report.summary())
        out[str(name)] = (pool_id, set(report.generations.values()))
    return out


def _data_generations(cloud: TwoHosts, data_id: str) -> set[int]:
    from strato.image.integrity import verify_image

    ((top,),) = cloud.server.sql("SELECT top_layer_id FROM volumes WHERE id = ?", data_id)
    report = verify_image(_file(cloud, str(top))[1])
    assert report.ok, report.summary()
    return set(report.generations.values())


def _pool_matches_db(cloud: TwoHosts, pool: str) -> None:
    """Every file in the pool's directory is a live layer the database records there, and back."""
    ((root,),) = cloud.server.sql("SELECT path FROM storage_pools WHERE id = ?", cloud.ids[pool])
    on_disk = {str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file()}
    known = {
        str(path)
        for (path,) in cloud.server.sql(
            "SELECT path FROM layers WHERE pool_id = ? AND removed IS NULL", cloud.ids[pool]
        )
    }
    assert on_disk == known, (pool, sorted(on_disk - known), sorted(known - on_disk))


def _wait_phase(cloud: TwoHosts, job_id: str, words: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        job = cloud.api().queryAsyncJobResult(jobid=job_id)
        assert job["jobstatus"] == 0, job
        if words in str(job.get("jobprogressphase") or ""):
            return
        assert time.monotonic() < deadline, f"the job never said {words!r}: {job}"
        time.sleep(0.1)


def _nothing_of_vm_on(cloud: TwoHosts, vm_id: str, pool: str) -> None:
    """No live layer of the VM's volumes or its memory files is recorded on the pool (its config drive
    follows its own rule)."""
    rows = cloud.server.sql(
        "SELECT l.path FROM layers l LEFT JOIN volumes v ON v.id = l.volume_id WHERE l.removed IS NULL "
        "AND l.pool_id = ? AND (v.vm_id = ? OR l.vm_id = ?) AND l.kind != 'configdrive'", cloud.ids[pool], vm_id, vm_id
    )  # fmt: skip
    assert rows == [], (pool, rows)


def test_a_snapshot_tree_moves_live_and_with_the_vm_and_every_snapshot_still_reverts(two_hosts: TwoHosts) -> None:
    cloud, api = two_hosts, two_hosts.api()
    vm_id = cloud.deploy("host1", "b", ["b"], TREE, userdata="#cloud-config\n")
    try:
        cloud.wait_console(vm_id, "STRATO-RUN-END integrity-write:vdb:16 rc=0")
        snap = lambda name, memory=False: cloud.ok(  # noqa: E731
            api.createVMSnapshot(virtualmachineid=vm_id, name=name, snapshotmemory=memory)
        )["vmsnapshot"]
        a = snap("A", True)
        _wait_count(cloud, vm_id, LOOP_END, 1)
        b = snap("B")
        cloud.ok(api.revertToVMSnapshot(vmsnapshotid=a["id"]))  # resumes in A's sleep: both loops again
        _wait_count(cloud, vm_id, LOOP_END, 2)
        c = snap("C")
        root, data = cloud.volumes(vm_id)
        want = {"A": {1}, "B": {2}, "C": {3}}
        assert {n: g for n, (_p, g) in _snapshot_generations(cloud, vm_id, data["id"]).items()} == want

        # a move of the root disk to pool c cancelled while it copies the memory file (1 MiB/s): nothing
        # of it stays on c, the tree is whole on b
        started = api.migrateVolume(volumeid=root["id"], storageid=cloud.ids["c"], livemigrate=True, bandwidth=1)
        _wait_phase(cloud, started["jobid"], "memory file")
        api.cancelAsyncJob(jobid=started["jobid"])
        assert wait_job(api, started["jobid"], 120)["jobstatus"] == 3
        _nothing_of_vm_on(cloud, vm_id, "c")
        _pool_matches_db(cloud, "c")
        assert {n: g for n, (_p, g) in _snapshot_generations(cloud, vm_id, data["id"]).items()} == want
        assert {v["storageid"] for v in cloud.volumes(vm_id)} == {cloud.ids["b"]}

        # live on host1: both disks from pool b to host1's local pool (the memory file with the root disk)
        for vol in (root, data):
            job = api.migrateVolume(volumeid=vol["id"], storageid=cloud.ids["local1"], livemigrate=True)
            cloud.ok(job)
            done = api.queryAsyncJobResult(jobid=job["jobid"])
            assert done["jobprogressdone"] == done["jobprogresstotal"], done
        found = _snapshot_generations(cloud, vm_id, data["id"])
        assert found == {n: (cloud.ids["local1"], g) for n, g in want.items()}
        _nothing_of_vm_on(cloud, vm_id, "b")
        _pool_matches_db(cloud, "b")
        _pool_matches_db(cloud, "local1")

        # with the VM to host2, both disks to host2's local pool (layers pulled host to host)
        cloud.ok(api.migrateVirtualMachineWithVolume(
            virtualmachineid=vm_id, hostid=cloud.ids["host2"],
            **{"migrateto[0].volume": root["id"], "migrateto[0].pool": cloud.ids["local2"],
               "migrateto[1].volume": data["id"], "migrateto[1].pool": cloud.ids["local2"]},
        ))  # fmt: skip
        assert cloud.vm(vm_id)["hostid"] == cloud.ids["host2"]
        found = _snapshot_generations(cloud, vm_id, data["id"])
        assert found == {n: (cloud.ids["local2"], g) for n, g in want.items()}
        memory = cloud.server.sql(
            "SELECT l.pool_id FROM vm_snapshots s JOIN layers l ON l.id = s.memory_layer_id WHERE s.id = ?", a["id"]
        )
        assert memory == [(cloud.ids["local2"],)]
        for pool in ("b", "local1", "local2"):
            _pool_matches_db(cloud, pool)
        _nothing_of_vm_on(cloud, vm_id, "local1")

        # every snapshot reverts on the new pool: B and C with the VM stopped, A resumes from its memory
        cloud.ok(api.stopVirtualMachine(id=vm_id, forced=True))
        for s, gens in ((b, {2}), (c, {3})):
            cloud.ok(api.revertToVMSnapshot(vmsnapshotid=s["id"]))
            assert _data_generations(cloud, data["id"]) == gens

        # offline, the stopped VM with storageid: the tree, the memory file and the config drive to pool c
        cloud.ok(api.migrateVirtualMachine(virtualmachineid=vm_id, storageid=cloud.ids["c"]))
        found = _snapshot_generations(cloud, vm_id, data["id"])
        assert found == {n: (cloud.ids["c"], g) for n, g in want.items()}
        assert _data_generations(cloud, data["id"]) == {3}
        drive = cloud.server.sql(
            "SELECT pool_id FROM layers WHERE vm_id = ? AND kind = 'configdrive' AND removed IS NULL", vm_id
        )
        assert drive == [(cloud.ids["c"],)], drive
        _nothing_of_vm_on(cloud, vm_id, "local2")
        for pool in ("b", "c", "local2"):
            _pool_matches_db(cloud, pool)

        cloud.ok(api.revertToVMSnapshot(vmsnapshotid=a["id"]))
        assert cloud.vm(vm_id)["state"] == "Running"
        text = cloud.wait_console(vm_id, "STRATO-RUN-END sleep:25 rc=0", timeout=90)
        assert "STRATO-TINY-BOOTED" not in text, text[-2000:]

        # deleting B and C removes their layers; then A (its one child: the running state) merges live
        for s in (b, c):
            cloud.ok(api.deleteVMSnapshot(vmsnapshotid=s["id"]))
        cloud.ok(api.deleteVMSnapshot(vmsnapshotid=a["id"]))
        assert not api.listVMSnapshot(virtualmachineid=vm_id).get("vmSnapshot")
        _wait_count(cloud, vm_id, LOOP_END, 2)
        cloud.ok(api.stopVirtualMachine(id=vm_id, forced=True))
        assert _data_generations(cloud, data["id"]) == {3}
        for pool in ("local1", "local2", "c"):
            _pool_matches_db(cloud, pool)
        cloud.nothing_transitional()
    finally:
        cloud.ok(api.destroyVirtualMachine(id=vm_id, expunge=True))
