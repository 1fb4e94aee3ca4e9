"""Placement as CloudStack's: createVolume without a pool makes an Allocated volume (no file, no space);
attachVolume creates it on a pool the VM's host reaches (a local pool of that host included, the disk
offering's tags and the pools' room respected), then attaches it.

On the simulator: a zone with no pool at all, a zone of two hosts with their local pools only (a cluster
pool is added later in the module), tags, capacity, a stopped VM, a failed attach undone. On QEMU: a
placed disk hot-plugged into a running tiny guest that sees it."""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from computelib import GIB, Env, api_error
from cs import CloudStack, CloudStackApiException

from helpers.agentproc import AgentProcess, start_agent
from helpers.faultlib import simulated_layers
from helpers.serverproc import ServerProcess, start_server
from strato.agent.multi import SHARED_STORAGE_FILE
from strato.protocol.client import AgentClient
from strato.protocol.messages import ConfigureSimulator, GetVmStats


def _tag() -> str:
    return uuid.uuid4().hex[:6]


FLEET_TOKEN = "placement"


@dataclass
class SimHost:
    name: str  # in the fleet: host-1, host-2
    data_dir: Path
    client: AgentClient


@dataclass
class SimZone:
    server: ServerProcess
    api: CloudStack  # the root admin, following jobs
    base: Path
    zone: str
    pod: str
    cluster: str
    hosts: dict[str, SimHost]  # host id -> its simulated agent
    local_pools: dict[str, str]  # host id -> its local pool's id
    template: str
    local_offering: str  # service offering, root disk on a local pool
    local_disk: str  # disk offering for local storage (1 GiB)
    shared_disk: str  # disk offering for shared storage (2 GiB)

    @property
    def host_ids(self) -> list[str]:
        return list(self.hosts)

    def volume(self, vol_id: str) -> dict[str, Any] | None:
        found = self.api.listVolumes(id=vol_id, listall=True).get("volume", [])
        return dict(found[0]) if found else None

    def deploy(self, **params: Any) -> dict[str, Any]:
        vm = self.api.deployVirtualMachine(
            zoneid=self.zone, serviceofferingid=self.local_offering, templateid=self.template, name=f"pl-{_tag()}",
            **params,
        )["virtualmachine"]  # fmt: skip
        return dict(self.api.listVirtualMachines(id=vm["id"], listall=True)["virtualmachine"][0])

    def layers(self) -> set[tuple[str, str]]:
        """(pool id, path) of every layer record of the simulated hosts (local pools by server id) and
        of the fleet's shared pools."""
        out: set[tuple[str, str]] = set()
        for host_id, host in self.hosts.items():
            out |= simulated_layers([host.data_dir], self.local_pools[host_id])
        path = self.base / "fleet" / SHARED_STORAGE_FILE
        shared = json.loads(path.read_text()) if path.exists() else {}
        out |= {(str(p), str(n)) for p, layers in (shared.get("layers") or {}).items() for n in layers}
        return out

    def plugged(self, vm: dict[str, Any]) -> set[int]:
        stats = self.hosts[vm["hostid"]].client.call(GetVmStats(name=vm["instancename"]))
        return {d.device_id for d in stats.disks if d.device_id is not None}


def _fleet_argv(base_dir: Path, count: int) -> list[str]:
    code = (
        "import sys; from pathlib import Path; from strato.agent.multi import run_simulator_fleet; "
        f"run_simulator_fleet(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], {FLEET_TOKEN!r})"
    )
    return [sys.executable, "-c", code, str(base_dir), str(count), "{listen}"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimZone]:
    """Two simulated hosts in one cluster (one fleet process: they share every pool but their local
    ones), each with its local pool; no other pool until `shared_pool`."""
    base = tmp_path_factory.mktemp("placement")
    server = start_server(base / "server")
    fleet: AgentProcess | None = None
    try:
        fleet = start_agent(base / "fleet", argv=_fleet_argv(base / "fleet", 2), health_path="/host-1",
                            health_token=f"{FLEET_TOKEN}-host-1")  # fmt: skip
        api = server.cs(fetch_result=True, job_timeout=60, timeout=60)
        zone = api.createZone(name=f"pz-{_tag()}")["zone"]["id"]
        pod = api.createPod(name="p", zoneid=zone)["pod"]["id"]
        cluster = api.addCluster(clustername="c", zoneid=zone, podid=pod, hypervisor="Simulator")["cluster"][0]["id"]
        hosts: dict[str, SimHost] = {}
        local: dict[str, str] = {}
        for n in (1, 2):
            name, token = f"host-{n}", f"{FLEET_TOKEN}-host-{n}"
            host = api.addHost(zoneid=zone, podid=pod, clusterid=cluster, url=f"{fleet.base_url}/{name}",
                               username="x", password=token, hypervisor="Simulator")["host"][0]  # fmt: skip
            hosts[host["id"]] = SimHost(name, base / "fleet" / name, fleet.client(token=token, path=f"/{name}"))
            [pool] = api.listStoragePools(zoneid=zone, hostid=host["id"], scope="host")["storagepool"]
            local[host["id"]] = pool["id"]
        store = base / "store"
        store.mkdir()
        api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store}", zoneid=zone)
        tmpl = api.registerTemplate(name="t", displaytext="t", url="http://images.invalid/t.qcow2", format="QCOW2",
                                    hypervisor="Simulator", zoneid=zone, ostypeid="Other Linux (64-bit)")  # fmt: skip
        offering = api.createServiceOffering(name="s", displaytext="s", cpunumber=1, cpuspeed=1000, memory=128,
                                             storagetype="local")  # fmt: skip
        yield SimZone(
            server=server,
            api=api,
            base=base,
            zone=zone,
            pod=pod,
            cluster=cluster,
            hosts=hosts,
            local_pools=local,
            template=tmpl["template"][0]["id"],
            local_offering=offering["serviceoffering"]["id"],
            local_disk=api.createDiskOffering(name="dl", displaytext="dl", disksize=1, storagetype="local")[
                "diskoffering"
            ]["id"],
            shared_disk=api.createDiskOffering(name="ds", displaytext="ds", disksize=2)["diskoffering"]["id"],
        )
    finally:
        if fleet is not None:
            fleet.stop()
        server.stop()


@pytest.fixture(scope="module")
def shared_pool(sim: SimZone) -> str:
    """A cluster pool added to the zone (the tests before the first that asks for it see local pools only)."""
    path = sim.base / "shared"
    path.mkdir()
    pool = sim.api.createStoragePool(name="shared", zoneid=sim.zone, podid=sim.pod, clusterid=sim.cluster,
                                     scope="cluster", url=f"SharedMountPoint://localhost{path}")  # fmt: skip
    return str(pool["storagepool"]["id"])


def _allocated(sim: SimZone, offering: str, **params: Any) -> dict[str, Any]:
    vol = sim.api.createVolume(name=f"av-{_tag()}", zoneid=sim.zone, diskofferingid=offering, **params)["volume"]
    assert vol["state"] == "Allocated", vol
    return dict(vol)


# --- no pool at all -----------------------------------------------------------------------------------


def test_a_zone_without_pools_takes_an_allocated_volume_and_deletes_it_at_once(sim: SimZone) -> None:
    bare = sim.api.createZone(name=f"bare-{_tag()}")["zone"]["id"]
    made = sim.api.createVolume(name="nowhere", zoneid=bare, diskofferingid=sim.shared_disk)["volume"]
    listed = sim.volume(made["id"])
    for vol in (made, listed):
        assert vol is not None and vol["state"] == "Allocated" and vol["size"] == 2 * GIB, vol
        assert "storageid" not in vol and "storage" not in vol and "path" not in vol, vol
        assert vol["storagetype"] == "shared" and vol["zoneid"] == bare and not vol.get("physicalsize"), vol
    answer = sim.server.cs(timeout=60).deleteVolume(id=made["id"])
    assert answer["success"] in (True, "true"), answer
    assert sim.volume(made["id"]) is None  # gone with the answer: there was no file to remove


# --- local pools only, then tags, capacity, shared ----------------------------------------------------


def test_local_only_zone_places_at_attach_on_the_vm_hosts_local_pool(sim: SimZone) -> None:
    host = sim.host_ids[1]
    vm = sim.deploy(hostid=host)
    assert vm["state"] == "Running" and vm["hostid"] == host, vm
    before = sim.layers()
    vol = _allocated(sim, sim.local_disk)
    assert sim.layers() == before  # no file for an Allocated volume
    attached = sim.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert attached["state"] == "Ready" and attached["virtualmachineid"] == vm["id"], attached
    assert attached["storageid"] == sim.local_pools[host] and attached["storagetype"] == "local", attached
    assert attached["deviceid"] == 1 and sim.plugged(vm) == {0, 1}
    assert len(sim.layers() - before) == 1
    # A shared offering has no pool in a zone of local pools: refused at once, nothing made.
    shared = _allocated(sim, sim.shared_disk)
    code, text = api_error(lambda: sim.api.attachVolume(id=shared["id"], virtualmachineid=vm["id"]))
    assert code == 533 and "not shared storage" in text and shared["name"] in text, text
    assert sim.volume(shared["id"])["state"] == "Allocated"  # type: ignore[index]
    sim.api.detachVolume(id=vol["id"])
    sim.api.deleteVolume(id=vol["id"])
    sim.api.deleteVolume(id=shared["id"])
    sim.api.destroyVirtualMachine(id=vm["id"], expunge=True)


def test_tags_and_room_are_the_allocators(sim: SimZone, shared_pool: str) -> None:
    vm = sim.deploy()
    tagged = sim.api.createDiskOffering(name=f"fast-{_tag()}", displaytext="f", disksize=1, tags="fast")
    vol = _allocated(sim, tagged["diskoffering"]["id"])
    code, text = api_error(lambda: sim.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"]))
    assert code == 533 and "tag fast" in text, text
    sim.api.updateStoragePool(id=shared_pool, tags="fast")
    try:
        attached = sim.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
        assert attached["storageid"] == shared_pool and attached["state"] == "Ready", attached
    finally:
        sim.api.updateStoragePool(id=shared_pool, tags="")
    custom = sim.api.createDiskOffering(name=f"any-{_tag()}", displaytext="c", customized=True)
    huge = _allocated(sim, custom["diskoffering"]["id"], size=1 << 20)
    assert huge["size"] == (1 << 20) * GIB  # Allocated: its size takes nothing from any pool yet
    code, text = api_error(lambda: sim.api.attachVolume(id=huge["id"], virtualmachineid=vm["id"]))
    assert code == 533 and "free" in text and huge["name"] in text, text
    sim.api.deleteVolume(id=huge["id"])
    sim.api.detachVolume(id=vol["id"])
    sim.api.deleteVolume(id=vol["id"])
    sim.api.destroyVirtualMachine(id=vm["id"], expunge=True)


def test_a_stopped_vm_gets_the_disk_in_its_root_pools_scope(sim: SimZone, shared_pool: str) -> None:
    """Decision (CloudStack's): on a pool reachable from the hosts that reach the root disk's pool, the
    VM's last host first. A root on host A's local pool: a local disk lands on A's local pool too."""
    host = sim.host_ids[0]
    vm = sim.deploy(hostid=host)
    sim.api.stopVirtualMachine(id=vm["id"])
    local = _allocated(sim, sim.local_disk)
    shared = _allocated(sim, sim.shared_disk)
    on_local = sim.api.attachVolume(id=local["id"], virtualmachineid=vm["id"])["volume"]
    on_shared = sim.api.attachVolume(id=shared["id"], virtualmachineid=vm["id"])["volume"]
    assert on_local["storageid"] == sim.local_pools[host] and on_local["vmstate"] == "Stopped", on_local
    assert on_shared["storageid"] == shared_pool and on_shared["state"] == "Ready", on_shared
    started = sim.api.startVirtualMachine(id=vm["id"])["virtualmachine"]
    assert started["hostid"] == host and sim.plugged(started) == {0, 1, 2}
    sim.api.destroyVirtualMachine(id=vm["id"], expunge=True)
    for vol in (local, shared):
        sim.api.deleteVolume(id=vol["id"])


def test_a_failed_attach_of_a_placed_volume_takes_its_file_back(sim: SimZone, shared_pool: str) -> None:
    vm = sim.deploy()
    vol = _allocated(sim, sim.shared_disk)
    before = sim.layers()
    sim.hosts[vm["hostid"]].client.call(ConfigureSimulator(command="attach_disk", fail_count=1))
    code, text = api_error(lambda: sim.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"]))
    assert code == 534 and "injected failure" in text, (code, text)
    now = sim.volume(vol["id"])
    assert now is not None and now["state"] == "Allocated" and "storageid" not in now, now
    assert not now.get("virtualmachineid") and sim.layers() == before and sim.plugged(vm) == {0}
    # The next attempt places it again and succeeds.
    attached = sim.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert attached["state"] == "Ready" and attached["storageid"] == shared_pool, attached
    sim.api.detachVolume(id=vol["id"])
    sim.api.deleteVolume(id=vol["id"])
    sim.api.destroyVirtualMachine(id=vm["id"], expunge=True)


def test_an_allocated_volume_resizes_without_a_file_and_is_made_at_its_new_size(sim: SimZone, shared_pool: str) -> None:
    vm = sim.deploy()
    vol = _allocated(sim, sim.shared_disk)
    before = sim.layers()
    resized = sim.api.resizeVolume(id=vol["id"], size=3)["volume"]
    assert resized["state"] == "Allocated" and resized["size"] == 3 * GIB and "storageid" not in resized, resized
    assert sim.layers() == before  # still no file
    code, text = api_error(lambda: sim.api.resizeVolume(id=vol["id"], size=1))
    assert code == 431 and "shrinking" in text, (code, text)
    attached = sim.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert attached["state"] == "Ready" and attached["size"] == 3 * GIB, attached
    sim.api.detachVolume(id=vol["id"])
    sim.api.deleteVolume(id=vol["id"])
    sim.api.destroyVirtualMachine(id=vm["id"], expunge=True)


def test_create_with_a_vm_or_a_pool_creates_at_once(sim: SimZone, shared_pool: str) -> None:
    vm = sim.deploy()
    with_vm = sim.api.createVolume(name=f"wv-{_tag()}", diskofferingid=sim.local_disk, virtualmachineid=vm["id"])
    vol = with_vm["volume"]
    assert vol["state"] == "Ready" and vol["virtualmachineid"] == vm["id"], vol
    assert vol["storageid"] == sim.local_pools[vm["hostid"]], vol
    on_pool = sim.api.createVolume(name=f"wp-{_tag()}", zoneid=sim.zone, diskofferingid=sim.shared_disk,
                                   storageid=shared_pool)["volume"]  # fmt: skip
    assert on_pool["state"] == "Ready" and on_pool["storageid"] == shared_pool, on_pool
    sim.api.detachVolume(id=vol["id"])
    for v in (vol, on_pool):
        sim.api.deleteVolume(id=v["id"])
    sim.api.destroyVirtualMachine(id=vm["id"], expunge=True)


def test_bad_parameters_are_named(sim: SimZone) -> None:
    vm = sim.deploy()
    other = sim.api.createZone(name=f"other-{_tag()}")["zone"]["id"]
    code, text = api_error(
        lambda: sim.api.createVolume(zoneid=other, diskofferingid=sim.local_disk, virtualmachineid=vm["id"])
    )
    assert code == 431 and "zoneid" in text and "virtualmachineid" in text, text
    code, text = api_error(lambda: sim.api.createVolume(zoneid=sim.zone))
    assert code == 431 and "diskofferingid" in text, text
    vol = _allocated(sim, sim.local_disk)
    code, text = api_error(lambda: sim.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"], deviceid=0))
    assert code == 431 and "deviceid" in text, text
    assert sim.volume(vol["id"])["state"] == "Allocated"  # type: ignore[index]
    sim.api.deleteVolume(id=vol["id"])
    sim.api.destroyVirtualMachine(id=vm["id"], expunge=True)


# --- QEMU: the guest sees the placed disk -------------------------------------------------------------


@pytest.mark.qemu
def test_a_placed_disk_appears_in_the_running_guest(env: Env) -> None:
    vm = env.deploy(f"place-{_tag()}", hostid=env.hosts["host2"]["id"])
    vol = env.api.createVolume(name=f"pl-{_tag()}", zoneid=env.zoneid, diskofferingid=env.disk_offering["id"])["volume"]
    try:
        assert vol["state"] == "Allocated" and "storageid" not in vol, vol
        assert set(env.boot_disks(vm)) == {"vda"}
        attached = env.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
        assert attached["state"] == "Ready" and attached["vmstate"] == "Running", attached
        pool = next(k for k, p in env.pools.items() if p["id"] == attached["storageid"])
        assert pool in ("shared1", "shared2"), pool  # a shared offering: a cluster pool host2 reaches
        env.assert_on_pool(attached, pool)
        assert env.block_devices(vm) == {0, 1}  # hot-plugged into the running QEMU
        # The guest lists its disks at boot: after a reboot it reads the placed disk, at its size.
        env.api.rebootVirtualMachine(id=vm["id"])
        disks = env.wait_boots(vm, 2)
        assert disks.get("vdb") == GIB and set(disks) == {"vda", "vdb"}, disks
    finally:
        env.destroy(vm["id"])
        with contextlib.suppress(CloudStackApiException):
            env.delete_volume(vol["id"])
