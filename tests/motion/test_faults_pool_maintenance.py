"""enableStorageMaintenance stopped after each of its steps, then recovered (the step-fault matrix): the
promises hold (nothing transitional, no stray file), and the maintenance is finished by the recovery (it
is meant to finish): the pool in Maintenance, every disk on the other pool, the running VM running on the
moved disk. Between runs the pool is brought back Up and the disks moved back onto it."""

from __future__ import annotations

from typing import Any

from motionlib import deploy, new_volume, vm_of, vol_of

from helpers.faultlib import Promises, run_fault_matrix

Cloud = Any
KIND = "pool.maintenance"


def test_storage_maintenance_at_every_step_on_the_simulator(simcloud: Cloud) -> None:
    api, shared, local = simcloud.api(), simcloud.ids["shared"], simcloud.ids["local"]
    vm = deploy(simcloud, start=True)
    attached = new_volume(simcloud, pool=shared, virtualmachineid=vm["id"])
    detached = new_volume(simcloud, pool=shared)
    volumes = [attached["id"], detached["id"]]

    def start() -> str:
        return str(api.enableStorageMaintenance(id=shared)["jobid"])

    def check(step: str, found: Promises) -> None:
        assert found.job["jobstatus"] == 1, (step, found.job)
        pool = api.listStoragePools(id=shared)["storagepool"][0]
        assert pool["state"] == "Maintenance", (step, pool)
        for vol_id in volumes:
            vol = vol_of(simcloud, vol_id)
            assert (vol["storageid"], vol["state"]) == (local, "Ready"), (step, vol)
        assert vm_of(simcloud, vm["id"])["state"] == "Running"
        simcloud.ok(api.cancelStorageMaintenance(id=shared))
        for vol_id in volumes:
            simcloud.ok(api.migrateVolume(volumeid=vol_id, storageid=shared, livemigrate=True))

    steps = run_fault_matrix(simcloud.server, api, simcloud.fault_file, KIND, start, simcloud.files, after_each=check)
    assert steps == ["plan moves", "refuse new disks", "move disks", "move config drives", "set maintenance"]
