"""migrateVirtualMachine and migrateVirtualMachineWithVolume stopped after each of their steps (the
server's worker stops there, then recovery runs), on the simulator fleet: the three promises of the
harness hold, and the user sees the VM Running on exactly one host, the one the database names, with its
disks on the pools the database names (the source before the commit point, the target after)."""

from __future__ import annotations

from collections.abc import Callable

from vmcloud import VmCloud, vmcloud  # noqa: F401

from helpers.faultlib import Promises, run_fault_matrix
from strato.protocol.client import AgentCallError
from strato.protocol.messages import GetVm, PowerState

HOST_NAMES = ("host-1", "host-2", "host-3")


def _check(cloud: VmCloud, vm_id: str, found: Promises, moved_to: str, pools_after: dict[str, str]) -> None:
    api = cloud.api()
    vm = api.listVirtualMachines(id=vm_id)["virtualmachine"][0]
    assert vm["state"] == "Running", vm
    host = next(name for name in HOST_NAMES if cloud.ids[name] == vm["hostid"])
    if found.job["jobstatus"] == 1:
        assert host == moved_to, (host, found.job)
    running = []
    for name in HOST_NAMES:
        try:
            report = cloud.agent(name).call(GetVm(name=vm["instancename"]))
        except AgentCallError:
            continue
        if report.power_state == PowerState.RUNNING:
            running.append(name)
    assert running == [host], f"the database says {host}, the VM runs on {running}"
    vols = cloud.volumes(vm_id)
    assert all(v["state"] == "Ready" for v in vols), vols
    if host == moved_to:
        for vol in vols:
            want = pools_after.get(vol["id"])
            assert want is None or vol["storageid"] == want, (vol, want)
    cloud.expunge(vm_id)


def _starter(cloud: VmCloud, make: Callable[[], tuple[str, str]]) -> tuple[Callable[[], str], list[str]]:
    vms: list[str] = []

    def start() -> str:
        vm_id, job_id = make()
        vms.append(vm_id)
        return job_id

    return start, vms


def test_migrate_vm_fault_matrix(vmcloud: VmCloud) -> None:  # noqa: F811
    def make() -> tuple[str, str]:
        vm = vmcloud.vm("host-1", "shared1")
        started = vmcloud.api().migrateVirtualMachine(virtualmachineid=vm["id"], hostid=vmcloud.ids["host-2"])
        return vm["id"], str(started["jobid"])

    start, vms = _starter(vmcloud, make)
    names = run_fault_matrix(
        vmcloud.server, vmcloud.api(), vmcloud.fault_file, "vm.migrate", start, vmcloud.files,
        after_each=lambda _step, found: _check(vmcloud, vms[-1], found, "host-2", {}),
    )  # fmt: skip
    assert {"prepare incoming", "migrate", "finish incoming", "forget at source"} <= set(names), names


def test_migrate_vm_with_volume_fault_matrix(vmcloud: VmCloud) -> None:  # noqa: F811
    """Root disk on host-1's local pool to host-2's local pool (layers pulled host to host), the VM with it."""
    pools_after: dict[str, str] = {}

    def make() -> tuple[str, str]:
        vm = vmcloud.vm("host-1", "local-1", local=True)
        (root,) = vmcloud.volumes(vm["id"])
        pools_after[root["id"]] = vmcloud.ids["local-2"]
        started = vmcloud.api().migrateVirtualMachineWithVolume(
            virtualmachineid=vm["id"], hostid=vmcloud.ids["host-2"],
            **{"migrateto[0].volume": root["id"], "migrateto[0].pool": vmcloud.ids["local-2"]},
        )  # fmt: skip
        return vm["id"], str(started["jobid"])

    start, vms = _starter(vmcloud, make)
    names = run_fault_matrix(
        vmcloud.server, vmcloud.api(), vmcloud.fault_file, "vm.migrate_with_volume", start, vmcloud.files,
        after_each=lambda _step, found: _check(vmcloud, vms[-1], found, "host-2", pools_after),
    )  # fmt: skip
    assert "disk 0: copy frozen layers" in names and "migrate" in names, names


def test_migrate_stopped_vm_to_pool_fault_matrix(vmcloud: VmCloud) -> None:  # noqa: F811
    vms: list[str] = []

    def start() -> str:
        vm = vmcloud.vm("host-1", "shared1")
        vmcloud.ok(vmcloud.api().stopVirtualMachine(id=vm["id"]))
        vms.append(vm["id"])
        return str(
            vmcloud.api().migrateVirtualMachine(virtualmachineid=vm["id"], storageid=vmcloud.ids["local-2"])["jobid"]
        )

    def check(found: Promises) -> None:
        api = vmcloud.api()
        vm = api.listVirtualMachines(id=vms[-1])["virtualmachine"][0]
        assert vm["state"] == "Stopped", vm
        pools = {v["storageid"] for v in vmcloud.volumes(vms[-1])}
        if found.job["jobstatus"] == 1:
            assert pools == {vmcloud.ids["local-2"]}, pools
        assert len(pools) == 1, pools
        vmcloud.expunge(vms[-1])

    names = run_fault_matrix(
        vmcloud.server, vmcloud.api(), vmcloud.fault_file, "vm.migrate", start, vmcloud.files,
        after_each=lambda _step, found: check(found),
    )  # fmt: skip
    assert "switch database" in names, names
