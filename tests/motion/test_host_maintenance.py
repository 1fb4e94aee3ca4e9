"""prepareHostForMaintenance moves every running VM of the host away, live, on the three-host simulator
fleet: a VM on shared storage goes to another host of its cluster without copying, a VM with its root disk
on the host's local pool goes with the disk (to another host's local pool); stopped VMs stay. A VM with
nowhere to go refuses the maintenance at once, moving nothing."""

from __future__ import annotations

from typing import Any

import pytest
from cs import CloudStackApiException
from vmcloud import VmCloud, vmcloud  # noqa: F401


def _host(cloud: VmCloud, name: str) -> dict[str, Any]:
    return dict(cloud.api().listHosts(id=cloud.ids[name])["host"][0])


def _vm(cloud: VmCloud, vm_id: str) -> dict[str, Any]:
    return dict(cloud.api().listVirtualMachines(id=vm_id)["virtualmachine"][0])


def test_maintenance_moves_the_running_vms_away_live(vmcloud: VmCloud) -> None:  # noqa: F811
    api = vmcloud.api()
    shared_vm = vmcloud.vm("host-1", "shared1")
    local_vm = vmcloud.vm("host-1", "local-1", local=True)
    stopped = vmcloud.vm("host-1", "shared1")
    vmcloud.ok(api.stopVirtualMachine(id=stopped["id"]))
    try:
        job = vmcloud.ok(api.prepareHostForMaintenance(id=vmcloud.ids["host-1"]), timeout=180)
        assert job["host"]["resourcestate"] == "Maintenance"
        for vm in (shared_vm, local_vm):
            now = _vm(vmcloud, vm["id"])
            assert now["state"] == "Running" and now["hostid"] != vmcloud.ids["host-1"], now
        [root] = [v for v in vmcloud.volumes(local_vm["id"]) if v["type"] == "ROOT"]
        assert root["storageid"] != vmcloud.ids["local-1"] and root["state"] == "Ready", root
        assert _vm(vmcloud, stopped["id"])["state"] == "Stopped"  # stays, as in CloudStack
        cmds = [j["cmd"] for j in api.listAsyncJobs(listall=True).get("asyncjobs", [])]
        assert any(c.endswith("migrateVirtualMachine") for c in cmds), cmds
        assert any(c.endswith("migrateVirtualMachineWithVolume") for c in cmds), cmds
        back = vmcloud.ok(api.cancelHostMaintenance(id=vmcloud.ids["host-1"]))
        assert back["host"]["resourcestate"] == "Enabled"
    finally:
        if _host(vmcloud, "host-1")["resourcestate"] != "Enabled":
            vmcloud.ok(api.cancelHostMaintenance(id=vmcloud.ids["host-1"]))
        for vm in (shared_vm, local_vm, stopped):
            vmcloud.expunge(vm["id"])


def test_a_vm_with_nowhere_to_go_refuses_the_maintenance(vmcloud: VmCloud) -> None:  # noqa: F811
    api = vmcloud.api()
    vm = vmcloud.vm("host-1", "shared1")
    others = ("host-2", "host-3")
    for name in others:
        api.updateHost(id=vmcloud.ids[name], allocationstate="Disable")
    try:
        with pytest.raises(CloudStackApiException) as exc:
            api.prepareHostForMaintenance(id=vmcloud.ids["host-1"])
        err = exc.value.error if isinstance(exc.value.error, dict) else {}
        assert err.get("errorcode") == 534, err
        text = str(err.get("errortext"))
        assert vm["name"] in text and "nowhere to go" in text and "Disabled" in text, text
        assert _host(vmcloud, "host-1")["resourcestate"] == "Enabled"
        assert _vm(vmcloud, vm["id"])["hostid"] == vmcloud.ids["host-1"]
    finally:
        for name in others:
            api.updateHost(id=vmcloud.ids[name], allocationstate="Enable")
        vmcloud.expunge(vm["id"])
