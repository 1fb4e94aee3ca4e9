"""importVm on the simulator stopped after each of its steps and recovered: the three promises hold, and
the VM is either Stopped with a volume per disk image on the pools asked for, or in Error with none; the
disk images it imported from are untouched."""

from __future__ import annotations

from conftest import FaultCloud
from helpers.faultlib import Promises, run_fault_matrix
from strato.protocol.messages import CreateLayer, GetLayerInfo, LayerRef, PoolRef
from strato.units import GIB

# The host's directory of disk images: the simulator keeps them as layers of a pool it knows as "import".
IMPORT_POOL = PoolRef(id="import", path="/srv/import")


def _images(cloud: FaultCloud) -> list[LayerRef]:
    client = cloud.agent.client()
    refs = [LayerRef(pool=IMPORT_POOL, name=name) for name in ("root.qcow2", "data.qcow2")]
    for ref in refs:
        client.call(CreateLayer(layer=ref, size_bytes=GIB))
    return refs


def test_import_on_the_simulator(simcloud: FaultCloud) -> None:
    images = _images(simcloud)
    vms: list[str] = []

    def start() -> str:
        started = simcloud.api().importVm(
            name=simcloud.name("fi"),
            hostid=simcloud.ids["host"],
            serviceofferingid=simcloud.ids["offering"],
            diskpath=f"{IMPORT_POOL.path}/{images[0].name}",
            storageid=simcloud.ids["local"],
            datadisks=[{"diskpath": f"{IMPORT_POOL.path}/{images[1].name}", "storageid": simcloud.ids["shared"]}],
        )
        vms.append(started["id"])
        return str(started["jobid"])

    def files() -> set[tuple[str, str]]:
        return {f for f in simcloud.files() if f[0] != IMPORT_POOL.id}

    def after_each(_step: str, found: Promises) -> None:
        api, vm_id = simcloud.api(), vms[-1]
        vm = api.listVirtualMachines(id=vm_id, listall=True)["virtualmachine"][0]
        vols = api.listVolumes(virtualmachineid=vm_id, listall=True).get("volume", [])
        if found.job["jobstatus"] == 1:
            assert vm["state"] == "Stopped", vm
            assert {v["storageid"] for v in vols} == {simcloud.ids["local"], simcloud.ids["shared"]}, vols
            assert all(v["state"] == "Ready" for v in vols), vols
        else:
            assert vm["state"] == "Error", vm
            assert vols == [], vols
        for ref in images:  # the sources are still there
            simcloud.agent.client().call(GetLayerInfo(layer=ref))
        simcloud.ok(api.destroyVirtualMachine(id=vm_id, expunge=True))
        for vol in vols:
            if vol["type"] == "DATADISK":
                api.deleteVolume(id=vol["id"])

    names = run_fault_matrix(
        simcloud.server, simcloud.api(), simcloud.fault_file, "vm.import", start, files, after_each=after_each
    )
    assert names == [f"import disk 0 ({IMPORT_POOL.path}/root.qcow2)",
                     f"import disk 1 ({IMPORT_POOL.path}/data.qcow2)", "finish"], names  # fmt: skip
