"""enableStorageMaintenance / cancelStorageMaintenance through `cs` on a simulator cloud (one host with
its local pool and a cluster pool): the pool's disks move to the other pool — a running VM's live, with
the VM running on; a stopped VM's and a detached volume's offline — then the pool is in Maintenance and
takes no new disk; cancel brings it back Up. A disk with nowhere to go refuses the maintenance at once,
moving nothing."""

from __future__ import annotations

from typing import Any

from motionlib import deploy, new_volume, refused, root_of, vm_of, vol_of

from helpers.faultlib import known_layers, transitional

Cloud = Any


def _pool(cloud: Cloud, pool_id: str) -> dict[str, Any]:
    return dict(cloud.api().listStoragePools(id=pool_id)["storagepool"][0])


def _promises_hold(cloud: Cloud) -> None:
    assert transitional(cloud.server) == []
    on_disk, known = cloud.files(), known_layers(cloud.server)
    assert on_disk - known == set(), on_disk - known
    assert known_layers(cloud.server, ready_only=True) - on_disk == set()


def test_maintenance_moves_every_disk_off_the_pool_and_cancel_brings_it_back(simcloud: Cloud) -> None:
    api, shared, local = simcloud.api(), simcloud.ids["shared"], simcloud.ids["local"]
    running = deploy(simcloud, start=True, rootdiskstorageid=shared)
    data = new_volume(simcloud, pool=shared)
    simcloud.ok(api.attachVolume(id=data["id"], virtualmachineid=running["id"]))
    stopped = deploy(simcloud, start=False, rootdiskstorageid=shared)
    detached = new_volume(simcloud, pool=shared)
    roots = [root_of(simcloud, vm["id"])["id"] for vm in (running, stopped)]
    moving = [*roots, data["id"], detached["id"]]
    try:
        started = api.enableStorageMaintenance(id=shared)
        job = simcloud.wait(started["jobid"], timeout=300)
        assert job["jobstatus"] == 1, job
        assert job["jobresult"]["storagepool"]["state"] == "Maintenance"
        assert _pool(simcloud, shared)["state"] == "Maintenance"
        for vol_id in moving:
            vol = vol_of(simcloud, vol_id)
            assert vol["storageid"] == local and vol["state"] == "Ready", vol
        assert vm_of(simcloud, running["id"])["state"] == "Running"  # moved live, not stopped
        assert vm_of(simcloud, stopped["id"])["state"] == "Stopped"
        # Each disk moved in a migrateVolume job of its own, listed as CloudStack lists jobs.
        cmds = [j["cmd"] for j in api.listAsyncJobs(listall=True).get("asyncjobs", [])]
        assert sum(1 for c in cmds if c.endswith("migrateVolume")) >= len(moving), cmds
        # A pool in maintenance takes no new disk.
        code, text = refused(api.createVolume, name="x", zoneid=simcloud.ids["zone"],
                             diskofferingid=simcloud.ids["disk"], storageid=shared)  # fmt: skip
        assert code == 431 and "storageid" in text and "Maintenance" in text, text
        code, text = refused(api.enableStorageMaintenance, id=shared)
        assert code in (431, 530) and "already in Maintenance" in text, text
        _promises_hold(simcloud)

        back = simcloud.wait(api.cancelStorageMaintenance(id=shared)["jobid"])
        assert back["jobstatus"] == 1, back
        assert _pool(simcloud, shared)["state"] == "Up"
        code, text = refused(api.cancelStorageMaintenance, id=shared)
        assert code in (431, 530) and "not in maintenance" in text, text
    finally:
        for vm in (running, stopped):
            simcloud.ok(api.destroyVirtualMachine(id=vm["id"], expunge=True))
        for vol_id in (data["id"], detached["id"]):
            api.deleteVolume(id=vol_id)


def test_a_disk_with_nowhere_to_go_refuses_the_maintenance_and_moves_nothing(simcloud: Cloud) -> None:
    api, shared, local = simcloud.api(), simcloud.ids["shared"], simcloud.ids["local"]
    api.updateStoragePool(id=shared, tags="gold")
    offering = api.createDiskOffering(name=simcloud.name("gold"), displaytext="gold", disksize=1, tags="gold")[
        "diskoffering"
    ]
    plain = new_volume(simcloud, pool=shared)
    gold = new_volume(simcloud, pool=shared, diskofferingid=offering["id"])
    try:
        code, text = refused(api.enableStorageMaintenance, id=shared)
        assert code == 534, (code, text)  # ResourceUnavailableException
        assert gold["name"] in text and "gold" in text and "nowhere to go" in text, text
        assert plain["name"] not in text  # the disk that could move is not blamed
        assert _pool(simcloud, shared)["state"] == "Up"
        assert vol_of(simcloud, plain["id"])["storageid"] == shared  # nothing moved
        assert vol_of(simcloud, gold["id"])["storageid"] == shared
        assert local != shared
        _promises_hold(simcloud)
    finally:
        api.updateStoragePool(id=shared, tags="")
        for vol in (plain, gold):
            api.deleteVolume(id=vol["id"])
