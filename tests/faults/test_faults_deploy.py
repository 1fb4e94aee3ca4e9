"""deployVirtualMachine stopped after each of its steps, then recovered: the three promises hold, and the VM
is either Running with its disks on the pools asked for, or in Error with no disks left."""

from __future__ import annotations

from collections.abc import Callable

from conftest import FaultCloud
from helpers.faultlib import Promises, run_fault_matrix


def _deployer(cloud: FaultCloud) -> tuple[Callable[[], str], list[str]]:
    vms: list[str] = []

    def start() -> str:
        started = cloud.api().deployVirtualMachine(
            zoneid=cloud.ids["zone"],
            serviceofferingid=cloud.ids["offering"],
            templateid=cloud.ids["template"],
            name=cloud.name("fd"),
            rootdiskstorageid=cloud.ids["local"],
            diskofferingid=cloud.ids["disk"],
            datadiskstorageid=cloud.ids["shared"],
        )
        vms.append(started["id"])
        return str(started["jobid"])

    return start, vms


def _check_vm(cloud: FaultCloud, vm_id: str, found: Promises) -> None:
    api = cloud.api()
    vm = api.listVirtualMachines(id=vm_id, listall=True)["virtualmachine"][0]
    vols = api.listVolumes(virtualmachineid=vm_id, listall=True).get("volume", [])
    if found.job["jobstatus"] == 1:
        assert vm["state"] == "Running", vm
        assert {v["storageid"] for v in vols} == {cloud.ids["local"], cloud.ids["shared"]}, vols
    else:
        assert vm["state"] == "Error", vm
        assert vols == [], vols
    # Expunged at once, so that guests do not pile up (and the next run's file check sees no leftovers).
    cloud.ok(api.destroyVirtualMachine(id=vm_id, expunge=True))


def test_deploy_on_the_simulator(simcloud: FaultCloud) -> None:
    start, vms = _deployer(simcloud)
    names = run_fault_matrix(
        simcloud.server, simcloud.api(), simcloud.fault_file, "vm.deploy", start, simcloud.files,
        after_each=lambda _step, found: _check_vm(simcloud, vms[-1], found),
    )  # fmt: skip
    assert len(names) >= 4, names


def test_deploy_with_qemu(qemucloud: FaultCloud) -> None:
    start, vms = _deployer(qemucloud)
    names = run_fault_matrix(
        qemucloud.server, qemucloud.api(), qemucloud.fault_file, "vm.deploy", start, qemucloud.files,
        after_each=lambda _step, found: _check_vm(qemucloud, vms[-1], found),
    )  # fmt: skip
    assert "start" in names, names
