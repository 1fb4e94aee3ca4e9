"""The user-facing finish of VM moves on the three-host simulator fleet: what a client sees while
migrateVirtualMachine(WithVolume) and host maintenance run (bytes over the disks and the RAM that never
go back, per part, with the phase in words), and the `bandwidth` parameter: checked at the request,
slowing the move, passed to every move a maintenance makes."""

from __future__ import annotations

import json
import time
from typing import Any

from motionlib import assert_honest_progress, refused, watch_job
from vmcloud import VmCloud, vmcloud  # noqa: F401

MIB = 1024 * 1024


def _vm(cloud: VmCloud, vm_id: str) -> dict[str, Any]:
    return dict(cloud.api().listVirtualMachines(id=vm_id)["virtualmachine"][0])


def _params(cloud: VmCloud, job_id: str) -> dict[str, Any]:
    raw = cloud.server.sql("SELECT params FROM jobs WHERE id = ?", job_id)[0][0]
    return dict(json.loads(raw) if isinstance(raw, str) else raw)


def test_migration_with_local_disks_shows_bytes_of_disks_and_ram(vmcloud: VmCloud) -> None:  # noqa: F811
    vm = vmcloud.vm("host-1", "local-1", data_pool="shared1", local=True)
    root, data = vmcloud.volumes(vm["id"])
    for host, command in (("host-1", "migrate_vm"), ("host-3", "pull_layer"), ("host-3", "copy_layer")):
        vmcloud.configure(host, command, delay_s=1.5)
    try:
        started = vmcloud.api().migrateVirtualMachineWithVolume(
            virtualmachineid=vm["id"], hostid=vmcloud.ids["host-3"],
            **{"migrateto[0].volume": root["id"], "migrateto[0].pool": vmcloud.ids["local-3"],
               "migrateto[1].volume": data["id"], "migrateto[1].pool": vmcloud.ids["shared2"]},
        )  # fmt: skip
        samples, end = watch_job(vmcloud.api(), started["jobid"])
    finally:
        for host, command in (("host-1", "migrate_vm"), ("host-3", "pull_layer"), ("host-3", "copy_layer")):
            vmcloud.configure(host, command, delay_s=0)
    assert end["jobstatus"] == 1, end
    assert_honest_progress(samples)
    parts = end["jobprogressparts"]
    stream = [p for p in parts if p.get("virtualmachineid") == vm["id"]]
    assert len(stream) == 1 and stream[0]["total"] >= 128 * MIB, parts  # the RAM and the disks' top layers
    assert "memory and 2 disk(s)" in stream[0]["name"], stream
    assert {p["volumeid"] for p in parts if "volumeid" in p} <= {root["id"], data["id"]}
    phases = {s.get("jobprogressphase") for s in samples} - {None}
    assert any("migrating memory and 2 disk(s)" in p for p in phases), phases  # the agent's phase
    assert _vm(vmcloud, vm["id"])["hostid"] == vmcloud.ids["host-3"]
    vmcloud.expunge(vm["id"])


def test_bandwidth_limits_a_migration_and_is_checked(vmcloud: VmCloud) -> None:  # noqa: F811
    vm = vmcloud.vm("host-1", "shared1")
    api = vmcloud.api()
    for bad in ("0", "-1", "lots"):
        for call, params in (
            (api.migrateVirtualMachine, {"virtualmachineid": vm["id"], "hostid": vmcloud.ids["host-2"]}),
            (api.migrateVirtualMachineWithVolume, {"virtualmachineid": vm["id"], "hostid": vmcloud.ids["host-2"]}),
            (api.prepareHostForMaintenance, {"id": vmcloud.ids["host-1"]}),
        ):
            code, text = refused(call, bandwidth=bad, **params)
            assert code == 431 and "bandwidth" in text, (bad, code, text)
    assert _vm(vmcloud, vm["id"])["hostid"] == vmcloud.ids["host-1"]
    began = time.monotonic()
    started = api.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=vmcloud.ids["host-2"], bandwidth=64)
    samples, end = watch_job(api, started["jobid"])
    took = time.monotonic() - began
    assert end["jobstatus"] == 1, end
    assert took >= 1.8, took  # 128 MiB of RAM at 64 MiB/s
    assert_honest_progress(samples)
    assert _params(vmcloud, started["jobid"])["bandwidth_bytes_per_s"] == 64 * MIB
    vmcloud.expunge(vm["id"])


def test_host_maintenance_shows_each_vm_and_limits_each_move(vmcloud: VmCloud) -> None:  # noqa: F811
    api = vmcloud.api()
    vms = [vmcloud.vm("host-1", "shared1"), vmcloud.vm("host-1", "local-1", local=True)]
    try:
        started = api.prepareHostForMaintenance(id=vmcloud.ids["host-1"], bandwidth=256)
        samples, end = watch_job(api, started["jobid"], timeout=180)
        assert end["jobstatus"] == 1, end
        assert_honest_progress(samples)
        assert {p.get("virtualmachineid") for p in end["jobprogressparts"]} == {v["id"] for v in vms}
        children = vmcloud.server.sql("SELECT params FROM jobs WHERE kind LIKE 'vm.migrate%' AND params LIKE ?",
                                      f"%{vms[1]['id']}%")  # fmt: skip
        speeds = {json.loads(r[0])["bandwidth_bytes_per_s"] for r in children}
        assert 256 * MIB in speeds, speeds
    finally:
        if api.listHosts(id=vmcloud.ids["host-1"])["host"][0]["resourcestate"] != "Enabled":
            vmcloud.ok(api.cancelHostMaintenance(id=vmcloud.ids["host-1"]))
        for vm in vms:
            vmcloud.expunge(vm["id"])
