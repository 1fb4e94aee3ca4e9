"""The user-facing finish of storage motion on one simulator host (migrateVolume, storage maintenance):
what a client sees of a move while it runs (bytes done / total that never go back, each disk's share in
`jobprogressparts`, the phase in words in `jobprogressphase`) in queryAsyncJobResult and listAsyncJobs;
the `bandwidth` parameter checked at the request and passed to each move; listApis declaring every
motion command."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from motionlib import assert_honest_progress, deploy, new_volume, refused, vol_of, watch_job

from strato.protocol.messages import ConfigureSimulator

Cloud = Any

MOTION = {
    "migrateVolume": (True, {"volumeid", "storageid", "livemigrate", "bandwidth"}),
    "migrateVirtualMachine": (True, {"virtualmachineid", "hostid", "storageid", "bandwidth"}),
    "migrateVirtualMachineWithVolume": (True, {"virtualmachineid", "hostid", "migrateto", "bandwidth"}),
    "findStoragePoolsForMigration": (False, {"id"}),
    "findHostsForMigration": (False, {"id"}),
    "enableStorageMaintenance": (True, {"id", "bandwidth"}),
    "cancelStorageMaintenance": (True, {"id"}),
    "prepareHostForMaintenance": (True, {"id", "bandwidth"}),
}


@pytest.fixture
def slow(simcloud: Cloud) -> Iterator[None]:
    client = simcloud.agent.client()
    for command in ("mirror_disk", "copy_layer"):
        client.call(ConfigureSimulator(command=command, delay_s=2.0))
    try:
        yield
    finally:
        for command in ("mirror_disk", "copy_layer"):
            client.call(ConfigureSimulator(command=command, delay_s=0.0))


def test_list_apis_declares_every_motion_command(simcloud: Cloud) -> None:
    apis = {a["name"]: a for a in simcloud.api().listApis()["api"]}
    for name, (isasync, params) in MOTION.items():
        assert name in apis, name
        assert apis[name]["isasync"] is isasync, name
        declared = {p["name"]: p for p in apis[name]["params"]}
        assert params <= set(declared), (name, set(declared))
        if "bandwidth" in declared:
            band = declared["bandwidth"]
            assert band["type"] == "integer" and band["required"] is False and "MiB/s" in band["description"]
    api = simcloud.api()
    assert api.listCapabilities()["capability"]["storagemotionenabled"] is True  # its host moves disks live
    [row] = api.listHypervisorCapabilities(hypervisor="Simulator")["hypervisorCapabilities"]
    assert row["storagemotionenabled"] is True
    api.updateHypervisorCapabilities(id=row["id"], storagemotionenabled=False)
    try:  # the only hypervisor in use has it switched off: clients are told so
        assert api.listCapabilities()["capability"]["storagemotionenabled"] is False
    finally:
        api.updateHypervisorCapabilities(id=row["id"], storagemotionenabled=True)


def test_live_move_progress_is_honest_and_per_disk(simcloud: Cloud, slow: None) -> None:
    vm = deploy(simcloud, start=True)
    vol = new_volume(simcloud, pool=simcloud.ids["local"], virtualmachineid=vm["id"])
    api = simcloud.api()
    started = api.migrateVolume(volumeid=vol["id"], storageid=simcloud.ids["shared"])
    samples, end = watch_job(api, started["jobid"])
    assert end["jobstatus"] == 1, end
    assert_honest_progress(samples)
    parts = [s["jobprogressparts"] for s in samples if s.get("jobprogressparts")]
    assert {p["volumeid"] for ps in parts for p in ps} == {vol["id"]}
    phases = {s.get("jobprogressphase") for s in samples} - {None}
    assert any("mirroring disk" in p for p in phases), phases  # the agent's own phase, carried through
    assert end["jobprogress"] == 100 and all(p["done"] == p["total"] for p in end["jobprogressparts"])
    assert "jobprogressphase" not in end
    listed = [j for j in api.listAsyncJobs(listall=True)["asyncjobs"] if j["jobid"] == started["jobid"]]
    assert listed and listed[0]["jobprogressparts"] == end["jobprogressparts"]


def test_bandwidth_must_be_a_positive_integer(simcloud: Cloud) -> None:
    vol = new_volume(simcloud, pool=simcloud.ids["local"])
    api = simcloud.api()
    for bad in ("0", "-5", "fast", "1.5"):
        code, text = refused(api.migrateVolume, volumeid=vol["id"], storageid=simcloud.ids["shared"], bandwidth=bad)
        assert code == 431 and "bandwidth" in text, (bad, code, text)
        code, text = refused(api.enableStorageMaintenance, id=simcloud.ids["local"], bandwidth=bad)
        assert code == 431 and "bandwidth" in text, (bad, code, text)
    assert vol_of(simcloud, vol["id"])["storageid"] == simcloud.ids["local"]


def test_storage_maintenance_shows_bytes_per_disk_and_limits_each_move(simcloud: Cloud, slow: None) -> None:
    api, shared, local = simcloud.api(), simcloud.ids["shared"], simcloud.ids["local"]
    vm = deploy(simcloud, start=True)
    vols = [new_volume(simcloud, pool=local, virtualmachineid=vm["id"]), new_volume(simcloud, pool=local)]
    try:
        started = api.enableStorageMaintenance(id=local, bandwidth=512)
        samples, end = watch_job(api, started["jobid"], timeout=180)
        assert end["jobstatus"] == 1, end
        assert_honest_progress(samples)
        moved = {p["volumeid"] for s in samples for p in s.get("jobprogressparts") or []}
        assert {v["id"] for v in vols} <= moved
        phases = {s.get("jobprogressphase") for s in samples} - {None}
        assert any(p.startswith("volume ") and " of " in p for p in phases), phases
        children = simcloud.server.sql("SELECT params FROM jobs WHERE kind = 'volume.migrate' AND params LIKE ?",
                                       "%bandwidth_mib\": 512%")  # fmt: skip
        assert len(children) >= len(vols), children
        for v in vols:
            assert vol_of(simcloud, v["id"])["storageid"] == shared
    finally:
        simcloud.ok(api.cancelStorageMaintenance(id=local))
