"""Moving VMs between hosts on the simulator, through `cs` (and Libcloud's signed requests): live with
shared storage, with a local disk via migrateVirtualMachineWithVolume, a stopped VM's disks with
storageid, findHostsForMigration, and cancel."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cs import CloudStackApiException
from vmcloud import VmCloud, vmcloud  # noqa: F401

from strato.protocol.client import AgentCallError
from strato.protocol.messages import GetVm, PowerState


def _vm(cloud: VmCloud, vm_id: str) -> dict[str, Any]:
    return dict(cloud.api().listVirtualMachines(id=vm_id)["virtualmachine"][0])


def _runs_only_on(cloud: VmCloud, vm: dict[str, Any], host: str) -> None:
    """The VM runs on `host` and no other simulated host knows it."""
    for other in ("host-1", "host-2", "host-3"):
        if other == host:
            assert cloud.agent(other).call(GetVm(name=vm["instancename"])).power_state == PowerState.RUNNING
        else:
            with pytest.raises(AgentCallError):
                cloud.agent(other).call(GetVm(name=vm["instancename"]))


def test_running_vm_moves_live_between_hosts_with_shared_storage(vmcloud: VmCloud) -> None:  # noqa: F811
    vm = vmcloud.vm("host-1", "shared1")
    vols = vmcloud.volumes(vm["id"])
    job = vmcloud.ok(vmcloud.api().migrateVirtualMachine(virtualmachineid=vm["id"], hostid=vmcloud.ids["host-2"]))
    moved = job["virtualmachine"]
    assert moved["hostid"] == vmcloud.ids["host-2"] and moved["state"] == "Running", moved
    assert _vm(vmcloud, vm["id"])["hostid"] == vmcloud.ids["host-2"]
    after = vmcloud.volumes(vm["id"])
    assert [(v["id"], v["storageid"], v["state"]) for v in after] == [(v["id"], v["storageid"], "Ready") for v in vols]
    _runs_only_on(vmcloud, vm, "host-2")
    # and back again
    vmcloud.ok(vmcloud.api().migrateVirtualMachine(virtualmachineid=vm["id"], hostid=vmcloud.ids["host-1"]))
    _runs_only_on(vmcloud, vm, "host-1")
    events = vmcloud.api().listEvents(type="VM.MIGRATE", listall=True).get("event", [])
    assert events, "no VM.MIGRATE event was recorded"
    vmcloud.expunge(vm["id"])


def test_local_disk_moves_with_the_vm_to_another_cluster(vmcloud: VmCloud) -> None:  # noqa: F811
    """Root disk on host-1's local pool, data disk on shared1: to host-3 (cluster c2), the root disk to
    host-3's local pool, the data disk to shared2. The template base is copied once per pool."""
    vm = vmcloud.vm("host-1", "local-1", data_pool="shared1", local=True)
    root, data = vmcloud.volumes(vm["id"])
    hosts = vmcloud.api().findHostsForMigration(id=vm["id"])["host"]
    by_id = {h["id"]: h for h in hosts}
    assert by_id[vmcloud.ids["host-3"]]["requiresStorageMotion"] is True
    started = vmcloud.api().migrateVirtualMachineWithVolume(
        virtualmachineid=vm["id"],
        hostid=vmcloud.ids["host-3"],
        **{
            "migrateto[0].volume": root["id"],
            "migrateto[0].pool": vmcloud.ids["local-3"],
            "migrateto[1].volume": data["id"],
            "migrateto[1].pool": vmcloud.ids["shared2"],
        },
    )
    job = vmcloud.ok(started)
    assert job["virtualmachine"]["hostid"] == vmcloud.ids["host-3"]
    root2, data2 = vmcloud.volumes(vm["id"])
    assert (root2["storageid"], data2["storageid"]) == (vmcloud.ids["local-3"], vmcloud.ids["shared2"])
    assert root2["state"] == data2["state"] == "Ready"
    _runs_only_on(vmcloud, vm, "host-3")
    # the source files are gone; the new chain is known to the database and present
    rows = vmcloud.server.sql(
        "SELECT pool_id, path, kind FROM layers WHERE removed IS NULL AND volume_id IN (?, ?)", root["id"], data["id"]
    )
    assert {r[0] for r in rows} <= {vmcloud.ids["local-3"], vmcloud.ids["shared2"]}, rows
    assert not [
        f
        for f in vmcloud.files()
        if f[0] in (vmcloud.ids["local-1"], vmcloud.ids["shared1"]) and (root["id"] in f[1] or data["id"] in f[1])
    ], "source files left behind"
    top = vmcloud.server.sql("SELECT top_layer_id FROM volumes WHERE id = ?", root["id"])[0][0]
    parent = vmcloud.server.sql("SELECT parent_id FROM layers WHERE id = ?", top)[0][0]
    base = vmcloud.server.sql("SELECT pool_id, kind FROM layers WHERE id = ?", parent)[0]
    assert tuple(base) == (vmcloud.ids["local-3"], "template"), base  # a linked clone stays one
    vmcloud.expunge(vm["id"])


def test_stopped_vm_disks_move_to_a_pool_with_storageid(vmcloud: VmCloud) -> None:  # noqa: F811
    vm = vmcloud.vm("host-1", "shared1", data_pool="shared1")
    api = vmcloud.api()
    vmcloud.ok(api.stopVirtualMachine(id=vm["id"]))
    job = vmcloud.ok(api.migrateVirtualMachine(virtualmachineid=vm["id"], storageid=vmcloud.ids["local-2"]))
    assert job["virtualmachine"]["state"] == "Stopped"
    assert {v["storageid"] for v in vmcloud.volumes(vm["id"])} == {vmcloud.ids["local-2"]}
    assert all(v["state"] == "Ready" for v in vmcloud.volumes(vm["id"]))
    # it starts where its disks now are
    vmcloud.ok(api.startVirtualMachine(id=vm["id"]))
    assert _vm(vmcloud, vm["id"])["hostid"] == vmcloud.ids["host-2"]
    vmcloud.expunge(vm["id"])


def test_find_hosts_for_migration(vmcloud: VmCloud) -> None:  # noqa: F811
    vm = vmcloud.vm("host-1", "shared1")
    api = vmcloud.api()
    api.updateHost(id=vmcloud.ids["host-2"], allocationstate="Disable")
    try:
        hosts = api.findHostsForMigration(id=vm["id"])
    finally:
        api.updateHost(id=vmcloud.ids["host-2"], allocationstate="Enable")
    assert hosts["count"] == 2
    by_id = {h["id"]: h for h in hosts["host"]}
    assert vmcloud.ids["host-1"] not in by_id  # never its own host
    h2, h3 = by_id[vmcloud.ids["host-2"]], by_id[vmcloud.ids["host-3"]]
    assert h2["suitableformigration"] is False and "Disabled" in h2["reasonunsuitable"], h2
    assert h2["requiresStorageMotion"] is False
    assert h3["suitableformigration"] is True and h3["requiresStorageMotion"] is True, h3
    for h in (h2, h3):
        assert h["memorytotal"] == 64 << 30 and h["cpunumber"] == 16
        assert h["cpuallocated"].endswith("%") and isinstance(h["memoryallocated"], int)
    again = {h["id"]: h for h in api.findHostsForMigration(id=vm["id"])["host"]}
    assert again[vmcloud.ids["host-2"]]["suitableformigration"] is True
    assert "reasonunsuitable" not in again[vmcloud.ids["host-2"]]
    vmcloud.expunge(vm["id"])


def test_cancel_keeps_the_vm_running_on_its_source(vmcloud: VmCloud) -> None:  # noqa: F811
    vm = vmcloud.vm("host-1", "shared1")
    api = vmcloud.api()
    vmcloud.configure("host-1", "migrate_vm", delay_s=30)
    try:
        started = api.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=vmcloud.ids["host-2"])
        deadline = time.monotonic() + 20
        while _vm(vmcloud, vm["id"])["state"] != "Migrating" or not _progress(vmcloud, started["jobid"]):
            assert time.monotonic() < deadline, "the migration never showed progress"
            time.sleep(0.1)
        api.cancelAsyncJob(jobid=started["jobid"])
        job = vmcloud.wait(started["jobid"])
    finally:
        vmcloud.configure("host-1", "migrate_vm", delay_s=0)
    assert job["jobstatus"] in (2, 3) and "cancel" in job["jobresult"]["errortext"].lower(), job
    after = _vm(vmcloud, vm["id"])
    assert after["state"] == "Running" and after["hostid"] == vmcloud.ids["host-1"]
    _runs_only_on(vmcloud, vm, "host-1")
    vmcloud.expunge(vm["id"])


def _progress(cloud: VmCloud, job_id: str) -> bool:
    rows = cloud.server.sql("SELECT progress_done, progress_total FROM jobs WHERE id = ?", job_id)
    return bool(rows and rows[0][1])


def test_a_failed_migration_leaves_the_vm_on_its_source(vmcloud: VmCloud) -> None:  # noqa: F811
    vm = vmcloud.vm("host-1", "shared1")
    vmcloud.configure("host-1", "migrate_vm", fail_count=1, fail_message="link between hosts broke")
    started = vmcloud.api().migrateVirtualMachine(virtualmachineid=vm["id"], hostid=vmcloud.ids["host-2"])
    job = vmcloud.wait(started["jobid"])
    assert job["jobstatus"] == 2 and "link between hosts broke" in job["jobresult"]["errortext"], job
    assert _vm(vmcloud, vm["id"])["hostid"] == vmcloud.ids["host-1"]
    _runs_only_on(vmcloud, vm, "host-1")
    vmcloud.expunge(vm["id"])


def test_migrate_with_volume_through_libcloud_signing(vmcloud: VmCloud) -> None:  # noqa: F811
    """Libcloud has no migrate call of its own: its connection signs the map parameters (migrateto[0].volume)
    and follows the async job."""
    from libcloud.compute.providers import Provider, get_driver

    keys = vmcloud.server.admin_keys()
    cls = get_driver(Provider.CLOUDSTACK)
    driver = cls(keys.apikey, keys.secretkey, secure=False, host="127.0.0.1", port=vmcloud.server.port,
                 path="/client/api")  # fmt: skip
    driver.connection.poll_interval = 0.1
    vm = vmcloud.vm("host-1", "local-1", local=True)
    (root,) = vmcloud.volumes(vm["id"])
    result = driver.connection._async_request(
        "migrateVirtualMachineWithVolume",
        params={"virtualmachineid": vm["id"], "hostid": vmcloud.ids["host-2"], "migrateto[0].volume": root["id"],
                "migrateto[0].pool": vmcloud.ids["local-2"]},
    )  # fmt: skip
    assert result["virtualmachine"]["hostid"] == vmcloud.ids["host-2"]
    listed = driver.connection._sync_request("listVirtualMachines", params={"id": vm["id"]})["virtualmachine"]
    assert listed[0]["state"] == "Running" and listed[0]["hostid"] == vmcloud.ids["host-2"]
    vmcloud.expunge(vm["id"])


def _refused(call: Any, code: int, *words: str) -> str:
    with pytest.raises(CloudStackApiException) as err:
        call()
    body = err.value.error
    text = str(body.get("errortext", ""))
    assert body.get("errorcode") == code, body
    for word in words:
        assert word.lower() in text.lower(), text
    return text


def test_bad_input_is_refused_at_once(vmcloud: VmCloud) -> None:  # noqa: F811
    api = vmcloud.api()
    ids = vmcloud.ids
    vm = vmcloud.vm("host-1", "shared1")
    local_vm = vmcloud.vm("host-1", "local-1", local=True)
    (local_root,) = vmcloud.volumes(local_vm["id"])
    jobs_before = vmcloud.server.sql("SELECT COUNT(*) FROM jobs")[0][0]

    def migrate(**kw: Any) -> Any:
        return lambda: api.migrateVirtualMachine(virtualmachineid=kw.pop("vm", vm["id"]), **kw)

    _refused(migrate(), 431, "hostid", "storageid")
    _refused(migrate(hostid=ids["host-2"], storageid=ids["shared1"]), 431, "exactly one")
    _refused(migrate(hostid=ids["host-1"]), 431, "already on host", "hostid")
    _refused(migrate(hostid="6f0b5c1e-3d2a-4b8e-9c7f-1a2b3c4d5e6f"), 431, "hostid")
    _refused(migrate(vm="6f0b5c1e-3d2a-4b8e-9c7f-1a2b3c4d5e6f", hostid=ids["host-2"]), 431, "virtualmachineid")
    _refused(migrate(hostid=ids["host-3"]), 431, "cannot reach", "migrateVirtualMachineWithVolume")
    _refused(migrate(storageid=ids["shared2"]), 431, "Stopped", "storageid")
    _refused(migrate(vm=local_vm["id"], hostid=ids["host-2"]), 431, "cannot reach")

    def with_volume(pool: str, volume: str | None = None, host: str = "host-2") -> Any:
        return lambda: api.migrateVirtualMachineWithVolume(
            virtualmachineid=local_vm["id"], hostid=ids[host],
            **{"migrateto[0].volume": volume or local_root["id"], "migrateto[0].pool": pool},
        )  # fmt: skip

    _refused(with_volume(ids["local-3"]), 431, "not reachable from host", "migrateto")
    _refused(with_volume(ids["shared2"]), 431, "not reachable from host")
    _refused(with_volume(ids["local-2"], volume=vmcloud.volumes(vm["id"])[0]["id"]), 431, "not a disk of VM")
    _refused(with_volume("not-a-uuid"), 431, "migrateto[0].pool")
    other_zone = api.createZone(name=vmcloud.name("oz"))["zone"]
    pod = api.createPod(name="p", zoneid=other_zone["id"])["pod"]
    cluster = api.addCluster(clustername="oc", zoneid=other_zone["id"], podid=pod["id"],
                             hypervisor="Simulator")["cluster"][0]  # fmt: skip
    far = api.createStoragePool(name="far", zoneid=other_zone["id"], podid=pod["id"], clusterid=cluster["id"],
                                scope="cluster", url=f"SharedMountPoint://localhost{vmcloud.base}/far")  # fmt: skip
    _refused(with_volume(far["storagepool"]["id"]), 431, "another zone")
    # too small a pool: host-2's local pool made tiny
    api.updateStoragePool(id=ids["local-2"], capacitybytes=1 << 20)
    try:
        _refused(with_volume(ids["local-2"]), 533, "free")
    finally:
        api.updateStoragePool(id=ids["local-2"], capacitybytes=1 << 40)
    # a host in maintenance, a host not Up
    api.updateHost(id=ids["host-2"], allocationstate="Disable")
    try:
        _refused(migrate(hostid=ids["host-2"]), 431, "Disabled")
    finally:
        api.updateHost(id=ids["host-2"], allocationstate="Enable")
    # a VM in the wrong state
    vmcloud.ok(api.stopVirtualMachine(id=vm["id"]))
    _refused(migrate(hostid=ids["host-2"]), 431, "Stopped", "Running")
    _refused(migrate(storageid=ids["shared1"]), 431, "already on storage pool")
    # a VM already in a job
    vmcloud.configure("host-1", "start_vm", delay_s=3)
    try:
        api.startVirtualMachine(id=vm["id"])
        time.sleep(0.3)
        _refused(migrate(storageid=ids["shared2"]), 431, "another job")
    finally:
        vmcloud.configure("host-1", "start_vm", delay_s=0)
    jobs_after = vmcloud.server.sql("SELECT COUNT(*) FROM jobs")[0][0]
    assert jobs_after == jobs_before + 2  # the stop and the start; no migration job was queued
    for v in (vm, local_vm):
        deadline = time.monotonic() + 20
        while _vm(vmcloud, v["id"])["state"] not in ("Running", "Stopped"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        vmcloud.expunge(v["id"])


def test_capability_gate_and_capacity(vmcloud: VmCloud) -> None:  # noqa: F811
    api = vmcloud.api()
    vm = vmcloud.vm("host-1", "shared1")
    # a host whose agent did not report live_migration (an older agent) is refused with the reason
    vmcloud.server.sql(
        "UPDATE hosts SET capabilities = ? WHERE id = ?", '{"live_migration": false}', vmcloud.ids["host-2"]
    )
    try:
        text = _refused(
            lambda: api.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=vmcloud.ids["host-2"]), 431,
            "live migration",
        )  # fmt: skip
        assert "host-2" in text or "sim" in text or "host" in text
    finally:
        vmcloud.server.sql(
            "UPDATE hosts SET capabilities = ? WHERE id = ?",
            '{"live_migration": true, "offline_storage_motion": true, "hot_plug_disks": true, "max_data_volumes": 24}',
            vmcloud.ids["host-2"],
        )
    vmcloud.server.sql("UPDATE hosts SET memory_bytes = ? WHERE id = ?", 64 << 20, vmcloud.ids["host-2"])
    try:
        _refused(lambda: api.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=vmcloud.ids["host-2"]), 533,
                 "memory")  # fmt: skip
    finally:
        vmcloud.server.sql("UPDATE hosts SET memory_bytes = ? WHERE id = ?", 64 << 30, vmcloud.ids["host-2"])
    vmcloud.expunge(vm["id"])


def test_only_root_admins_may_move_vms(vmcloud: VmCloud) -> None:  # noqa: F811
    from helpers.serverproc import create_user_keys

    api = vmcloud.api()
    vm = vmcloud.vm("host-1", "shared1")
    host = vmcloud.ids["host-2"]
    for accounttype in (0, 2):
        keys = create_user_keys(api, vmcloud.server.endpoint, username=vmcloud.name("u"), accounttype=accounttype)
        other = vmcloud.server.cs(keys)
        _refused(lambda c=other: c.migrateVirtualMachine(virtualmachineid=vm["id"], hostid=host), 432, "not available")
        _refused(lambda c=other: c.findHostsForMigration(id=vm["id"]), 432, "not available")
        _refused(lambda c=other: c.migrateVirtualMachineWithVolume(virtualmachineid=vm["id"], hostid=host), 432,
                 "not available")  # fmt: skip
    vmcloud.expunge(vm["id"])


def test_config_drive_moves_with_a_local_root_disk(vmcloud: VmCloud) -> None:  # noqa: F811
    import base64

    api = vmcloud.api()
    started = api.deployVirtualMachine(
        zoneid=vmcloud.ids["zone"], serviceofferingid=vmcloud.ids["local_offering"], templateid=vmcloud.ids["template"],
        name=vmcloud.name("cd"), hostid=vmcloud.ids["host-1"], rootdiskstorageid=vmcloud.ids["local-1"],
        userdata=base64.b64encode(b"#cloud-config\n").decode(),
    )  # fmt: skip
    vmcloud.ok(started)
    vm_id = started["id"]
    (root,) = vmcloud.volumes(vm_id)

    def drives() -> list[tuple[str, str]]:
        rows = vmcloud.server.sql(
            "SELECT pool_id, state FROM layers WHERE vm_id = ? AND kind = 'configdrive' AND removed IS NULL", vm_id
        )
        return [(str(p), str(st)) for p, st in rows]

    assert drives() == [(vmcloud.ids["local-1"], "Ready")]
    _refused(lambda: api.migrateVirtualMachine(virtualmachineid=vm_id, hostid=vmcloud.ids["host-2"]), 431,
             "cannot reach")  # fmt: skip
    vmcloud.ok(api.migrateVirtualMachineWithVolume(
        virtualmachineid=vm_id, hostid=vmcloud.ids["host-2"],
        **{"migrateto[0].volume": root["id"], "migrateto[0].pool": vmcloud.ids["local-2"]},
    ))  # fmt: skip
    assert drives() == [(vmcloud.ids["local-2"], "Ready")]
    files = vmcloud.files()
    assert (vmcloud.ids["local-2"], f"configdrive/{vm_id}.iso") in files
    assert (vmcloud.ids["local-1"], f"configdrive/{vm_id}.iso") not in files
    vmcloud.expunge(vm_id)
