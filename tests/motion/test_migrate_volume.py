"""migrateVolume and findStoragePoolsForMigration through `cs`, on a simulator cloud (one host reaching
its local pool and a cluster pool). Libcloud's CloudStack driver has neither call.

What a user sees: the volume on its new pool (listVolumes), Migrating while it moves, back to Ready and
its VM to its state after; progress in the job; the agent's VM on the new layer; the template base copied
once per pool and shared; nothing of the source left. Bad input refused at once, nothing started."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from motionlib import (
    GIB,
    deploy,
    jobs_of,
    new_volume,
    other_pool,
    refused,
    root_of,
    vm_of,
    vol_of,
    wait_progress,
)

from helpers.serverproc import create_user_keys
from strato.protocol.messages import ConfigureSimulator

Cloud = Any


def _sim_state(cloud: Cloud) -> dict[str, Any]:
    return dict(json.loads((cloud.agent.data_dir / "simulator-state.json").read_text()))


def _agent_disk(cloud: Cloud, vm: dict[str, Any], device_id: int) -> dict[str, Any]:
    """The disk as the simulated hypervisor has it (its layer: pool id and name)."""
    disks = _sim_state(cloud)["vms"][vm["instancename"]]["spec"]["disks"]
    return dict(next(d for d in disks if d["device_id"] == device_id))


def _layer_record(cloud: Cloud, pool_id: str, name: str) -> dict[str, Any]:
    """A layer as the simulator records it (its host-local pool is kept under "local" or its id)."""
    layers = _sim_state(cloud)["storage"]["layers"]
    for key in (pool_id, "local"):
        if name in layers.get(key, {}):
            return dict(layers[key][name])
    raise AssertionError(f"no layer {name} on pool {pool_id} in the simulator")


def _delay(cloud: Cloud, command: str, seconds: float) -> None:
    cloud.agent.client().call(ConfigureSimulator(command=command, delay_s=seconds))


def _layers(cloud: Cloud, vol_id: str) -> list[tuple[str, str, str]]:
    """(pool, path, kind) of the volume's live chain, top first, as the database holds it."""
    top = cloud.server.sql("SELECT top_layer_id FROM volumes WHERE id = ?", vol_id)[0][0]
    out = []
    while top:
        pool, path, kind, parent = cloud.server.sql(
            "SELECT pool_id, path, kind, parent_id FROM layers WHERE id = ? AND removed IS NULL", top
        )[0]
        out.append((pool, path, kind))
        top = parent
    return out


def _promises_hold(cloud: Cloud) -> None:
    from helpers.faultlib import known_layers, transitional

    assert transitional(cloud.server) == []
    on_disk, known = cloud.files(), known_layers(cloud.server)
    assert on_disk - known == set(), on_disk - known
    assert known_layers(cloud.server, ready_only=True) - on_disk == set()


@pytest.fixture(scope="module")
def pools(simcloud: Cloud) -> dict[str, str]:
    """Pools a move must refuse: one in a cluster without hosts (unreachable), one in another zone, one
    too small (1 MiB)."""
    api = simcloud.api()
    ids = simcloud.ids
    c2 = api.addCluster(clustername="c2", zoneid=ids["zone"], podid=ids["pod"], hypervisor="Simulator")["cluster"][0]
    far = simcloud.base / "far"
    far.mkdir()
    unreachable = api.createStoragePool(
        name="unreachable", zoneid=ids["zone"], podid=ids["pod"], clusterid=c2["id"], scope="cluster",
        url=f"SharedMountPoint://localhost{far}",
    )["storagepool"]  # fmt: skip
    zone2 = api.createZone(name=simcloud.name("z2"))["zone"]
    pod2 = api.createPod(name="p2", zoneid=zone2["id"])["pod"]
    cl2 = api.addCluster(clustername="c", zoneid=zone2["id"], podid=pod2["id"], hypervisor="Simulator")["cluster"][0]
    away = simcloud.base / "away"
    away.mkdir()
    elsewhere = api.createStoragePool(
        name="elsewhere", zoneid=zone2["id"], podid=pod2["id"], clusterid=cl2["id"], scope="cluster",
        url=f"SharedMountPoint://localhost{away}",
    )["storagepool"]  # fmt: skip
    tiny = simcloud.base / "tiny"
    tiny.mkdir()
    small = api.createStoragePool(name="small", zoneid=ids["zone"], podid=ids["pod"], clusterid=ids["cluster"],
                                  scope="cluster", url=f"SharedMountPoint://localhost{tiny}",
                                  capacitybytes=1024 * 1024)["storagepool"]  # fmt: skip
    return {"unreachable": unreachable["id"], "elsewhere": elsewhere["id"], "small": small["id"]}


@pytest.fixture
def slow_mirror(simcloud: Cloud) -> Iterator[None]:
    _delay(simcloud, "mirror_disk", 4.0)
    try:
        yield
    finally:
        _delay(simcloud, "mirror_disk", 0.0)


# --- the declarations ---------------------------------------------------------------------------------


def test_list_apis_and_capabilities(simcloud: Cloud) -> None:
    api = simcloud.api()
    found = {
        a["name"]: a for a in api.listApis()["api"] if a["name"] in ("migrateVolume", "findStoragePoolsForMigration")
    }
    assert set(found) == {"migrateVolume", "findStoragePoolsForMigration"}
    assert found["migrateVolume"]["isasync"] is True
    params = {p["name"]: p for p in found["migrateVolume"]["params"]}
    assert {"volumeid", "storageid", "livemigrate", "bandwidth"} <= set(params)
    assert params["volumeid"]["required"] is True and params["bandwidth"]["required"] is False
    assert "MiB/s" in params["bandwidth"]["description"]
    caps = api.listHypervisorCapabilities(hypervisor="Simulator")["hypervisorCapabilities"][0]
    assert caps["storagemotionenabled"] is True  # every simulator host reports live_storage_motion


# --- offline ------------------------------------------------------------------------------------------


def test_offline_move_of_a_detached_volume(simcloud: Cloud) -> None:
    vol = new_volume(simcloud, pool=simcloud.ids["local"])
    before = _layers(simcloud, vol["id"])
    result = simcloud.ok(simcloud.api().migrateVolume(volumeid=vol["id"], storageid=simcloud.ids["shared"]))
    moved = result["volume"]
    assert (moved["id"], moved["storageid"], moved["state"], moved["size"]) == (
        vol["id"],
        simcloud.ids["shared"],
        "Ready",
        GIB,
    )
    assert vol_of(simcloud, vol["id"])["storageid"] == simcloud.ids["shared"]
    after = _layers(simcloud, vol["id"])
    assert len(after) == len(before) == 1 and after[0][0] == simcloud.ids["shared"]
    files = simcloud.files()
    assert (simcloud.ids["shared"], after[0][1]) in files and (simcloud.ids["local"], before[0][1]) not in files
    _promises_hold(simcloud)
    # and back again
    simcloud.ok(simcloud.api().migrateVolume(volumeid=vol["id"], storageid=simcloud.ids["local"]))
    assert vol_of(simcloud, vol["id"])["storageid"] == simcloud.ids["local"]
    _promises_hold(simcloud)


def test_offline_move_of_a_stopped_vms_root_disk(simcloud: Cloud) -> None:
    vm = deploy(simcloud, start=True)
    simcloud.ok(simcloud.api().stopVirtualMachine(id=vm["id"]))
    root = root_of(simcloud, vm["id"])
    target = other_pool(simcloud, root)
    result = simcloud.ok(simcloud.api().migrateVolume(volumeid=root["id"], storageid=target))
    assert result["volume"]["storageid"] == target and result["volume"]["state"] == "Ready"
    assert vm_of(simcloud, vm["id"])["state"] == "Stopped"
    chain = _layers(simcloud, root["id"])
    assert [p for p, _, _ in chain] == [target, target]  # the clone's top and the template base, both moved
    assert chain[1][2] == "template"
    simcloud.ok(simcloud.api().startVirtualMachine(id=vm["id"]))
    disk = _agent_disk(simcloud, vm_of(simcloud, vm["id"]), 0)
    assert (disk["layer"]["pool"]["id"], disk["layer"]["name"]) == (target, chain[0][1])
    _promises_hold(simcloud)


# --- live ---------------------------------------------------------------------------------------------


def test_live_move_of_a_running_vms_data_disk(simcloud: Cloud, slow_mirror: None) -> None:
    vm = deploy(simcloud, start=True)
    vol = new_volume(simcloud, pool=simcloud.ids["local"], virtualmachineid=vm["id"])
    device = int(vol_of(simcloud, vol["id"])["deviceid"])
    api = simcloud.api()
    started = api.migrateVolume(volumeid=vol["id"], storageid=simcloud.ids["shared"], livemigrate=True, bandwidth=100)
    job = wait_progress(api, started["jobid"])
    assert job["jobstatus"] == 0 and 0 < job["jobprogressdone"] <= job["jobprogresstotal"], job
    assert vol_of(simcloud, vol["id"])["state"] == "Migrating"
    assert vm_of(simcloud, vm["id"])["state"] == "Migrating"
    listed = api.listAsyncJobs(listall=True)["asyncjobs"]
    assert any(j["jobid"] == started["jobid"] and j.get("jobprogresstotal") for j in listed)
    result = simcloud.ok(started)
    assert result["volume"]["storageid"] == simcloud.ids["shared"] and result["volume"]["state"] == "Ready"
    assert vm_of(simcloud, vm["id"])["state"] == "Running"
    top = _layers(simcloud, vol["id"])[0]
    disk = _agent_disk(simcloud, vm_of(simcloud, vm["id"]), device)
    assert (disk["layer"]["pool"]["id"], disk["layer"]["name"]) == (simcloud.ids["shared"], top[1])
    _promises_hold(simcloud)


def test_linked_clones_root_disk_moves_live_keeping_its_shared_template_base(simcloud: Cloud) -> None:
    """Two clones' root disks moved to the other pool: the template base is copied there once (or was
    there) and both chains stay linked to it, not flattened."""
    vms = [deploy(simcloud, start=True) for _ in range(2)]
    roots = [root_of(simcloud, vm["id"]) for vm in vms]
    target = other_pool(simcloud, roots[0])
    for vm, root in zip(vms, roots, strict=True):
        if root["storageid"] == target:
            continue
        simcloud.ok(simcloud.api().migrateVolume(volumeid=root["id"], storageid=target))
        assert vm_of(simcloud, vm["id"])["state"] == "Running"
    bases = simcloud.server.sql(
        "SELECT id, path FROM layers WHERE pool_id = ? AND kind = 'template' AND template_id = ? AND removed IS NULL",
        target,
        simcloud.ids["template"],
    )
    assert len(bases) == 1, bases
    for vm, root in zip(vms, roots, strict=True):
        chain = _layers(simcloud, root["id"])
        assert [(p, k) for p, _, k in chain] == [(target, "volume"), (target, "template")]
        assert chain[1][1] == bases[0][1]
        disk = _agent_disk(simcloud, vm_of(simcloud, vm["id"]), 0)
        assert (disk["layer"]["pool"]["id"], disk["layer"]["name"]) == (target, chain[0][1])
        record = _layer_record(simcloud, target, chain[0][1])
        assert (record["backing"]["pool"]["id"], record["backing"]["name"]) == (target, bases[0][1])
    _promises_hold(simcloud)


def test_cancel_leaves_the_volume_on_its_source(simcloud: Cloud, slow_mirror: None) -> None:
    vm = deploy(simcloud, start=True)
    vol = new_volume(simcloud, pool=simcloud.ids["local"], virtualmachineid=vm["id"])
    device = int(vol_of(simcloud, vol["id"])["deviceid"])
    source_top = _layers(simcloud, vol["id"])[0]
    api = simcloud.api()
    started = api.migrateVolume(volumeid=vol["id"], storageid=simcloud.ids["shared"])
    wait_progress(api, started["jobid"])
    api.cancelAsyncJob(jobid=started["jobid"])
    job = simcloud.wait(started["jobid"])
    assert job["jobstatus"] == 3 and "cancel" in str(job.get("jobresult", {})).lower(), job  # 3: cancelled
    after = vol_of(simcloud, vol["id"])
    assert (after["storageid"], after["state"]) == (simcloud.ids["local"], "Ready")
    assert vm_of(simcloud, vm["id"])["state"] == "Running"
    assert _layers(simcloud, vol["id"])[0] == source_top
    disk = _agent_disk(simcloud, vm_of(simcloud, vm["id"]), device)
    assert (disk["layer"]["pool"]["id"], disk["layer"]["name"]) == (simcloud.ids["local"], source_top[1])
    assert not [f for f in simcloud.files() if f[0] == simcloud.ids["shared"] and vol["id"] in f[1]]
    _promises_hold(simcloud)


# --- findStoragePoolsForMigration ---------------------------------------------------------------------


def test_find_storage_pools_for_migration(simcloud: Cloud, pools: dict[str, str]) -> None:
    vm = deploy(simcloud, start=True)
    vol = new_volume(simcloud, pool=simcloud.ids["local"], virtualmachineid=vm["id"])
    found = {p["id"]: p for p in simcloud.api().findStoragePoolsForMigration(id=vol["id"])["storagepool"]}
    assert simcloud.ids["local"] not in found
    assert {simcloud.ids["shared"], *pools.values()} <= set(found)
    assert found[simcloud.ids["shared"]]["suitableformigration"] is True
    assert "reasonunsuitable" not in found[simcloud.ids["shared"]]
    for key, words in (
        ("unreachable", "not reachable from host"),
        ("elsewhere", "another zone"),
        ("small", "too small"),
    ):
        pool = found[pools[key]]
        assert pool["suitableformigration"] is False and words in pool["reasonunsuitable"], pool
    assert found[pools["small"]]["name"] == "small" and "disksizetotal" in found[pools["small"]]


# --- bad input: refused at once, nothing started ------------------------------------------------------


def _refused_and_nothing_started(cloud: Cloud, vol: dict[str, Any], code: int, words: str, **params: Any) -> None:
    jobs = jobs_of(cloud, vol["id"])
    got_code, text = refused(cloud.api().migrateVolume, volumeid=vol["id"], **params)
    assert got_code == code and words in text, (got_code, text)
    assert jobs_of(cloud, vol["id"]) == jobs
    after = vol_of(cloud, vol["id"])
    assert (after["state"], after["storageid"]) == (vol["state"], vol["storageid"])


def test_refused_for_a_domain_admin_and_a_user(simcloud: Cloud) -> None:
    vol = new_volume(simcloud, pool=simcloud.ids["local"])
    endpoint = simcloud.server.endpoint
    for accounttype in (0, 2):
        keys = create_user_keys(simcloud.api(), endpoint, username=simcloud.name(f"na{accounttype}"),
                                accounttype=accounttype)  # fmt: skip
        caller = simcloud.server.cs(keys=keys)
        for call, params in (
            (caller.migrateVolume, {"volumeid": vol["id"], "storageid": simcloud.ids["shared"]}),
            (caller.findStoragePoolsForMigration, {"id": vol["id"]}),
        ):
            code, text = refused(call, **params)
            assert code == 432 and "not available for the user" in text, (code, text)
    assert jobs_of(simcloud, vol["id"]) == 0


def test_refused_same_pool(simcloud: Cloud) -> None:
    vol = new_volume(simcloud, pool=simcloud.ids["local"])
    _refused_and_nothing_started(simcloud, vol, 431, "storageid: the volume is already on pool",
                                 storageid=simcloud.ids["local"])  # fmt: skip


def test_refused_pool_in_another_zone(simcloud: Cloud, pools: dict[str, str]) -> None:
    vol = new_volume(simcloud, pool=simcloud.ids["local"])
    _refused_and_nothing_started(simcloud, vol, 431, "storageid: pool elsewhere is in another zone",
                                 storageid=pools["elsewhere"])  # fmt: skip


def test_refused_pool_the_vms_host_cannot_reach(simcloud: Cloud, pools: dict[str, str]) -> None:
    vm = deploy(simcloud, start=True)
    vol = new_volume(simcloud, pool=simcloud.ids["local"], virtualmachineid=vm["id"])
    _refused_and_nothing_started(simcloud, vol, 431, "storageid: pool unreachable is not reachable from host",
                                 storageid=pools["unreachable"])  # fmt: skip
    detached = new_volume(simcloud, pool=simcloud.ids["local"])
    _refused_and_nothing_started(simcloud, detached, 431, "no Up host reaches both pool",
                                 storageid=pools["unreachable"])  # fmt: skip


def test_refused_too_small_pool(simcloud: Cloud, pools: dict[str, str]) -> None:
    vol = new_volume(simcloud, pool=simcloud.ids["local"])
    _refused_and_nothing_started(simcloud, vol, 533, "storageid: pool small is too small", storageid=pools["small"])


def test_refused_storage_tags(simcloud: Cloud) -> None:
    gold = simcloud.api().createDiskOffering(name="gold", displaytext="gold", disksize=1, tags="gold")["diskoffering"]
    vol = new_volume(simcloud, pool=simcloud.ids["shared"], diskofferingid=gold["id"])
    _refused_and_nothing_started(simcloud, vol, 431, "lacks the disk offering's storage tag gold",
                                 storageid=simcloud.ids["local"])  # fmt: skip


def test_refused_volume_already_moving(simcloud: Cloud, slow_mirror: None) -> None:
    vm = deploy(simcloud, start=True)
    vol = new_volume(simcloud, pool=simcloud.ids["local"], virtualmachineid=vm["id"])
    api = simcloud.api()
    started = api.migrateVolume(volumeid=vol["id"], storageid=simcloud.ids["shared"])
    # queued or running: the second request is refused either way
    code, text = refused(api.migrateVolume, volumeid=vol["id"], storageid=simcloud.ids["shared"])
    assert code == 431 and "volumeid" in text and ("another job" in text or "already being moved" in text), text
    wait_progress(api, started["jobid"])
    code, text = refused(api.migrateVolume, volumeid=vol["id"], storageid=simcloud.ids["shared"])
    assert code == 431 and "volumeid" in text, text
    simcloud.ok(started)
    assert jobs_of(simcloud, vol["id"]) == 1


def test_refused_vm_in_a_transitional_state(simcloud: Cloud) -> None:
    vm = deploy(simcloud, start=False)
    root = root_of(simcloud, vm["id"])
    _delay(simcloud, "start_vm", 3.0)
    try:
        started = simcloud.api().startVirtualMachine(id=vm["id"])
        deadline = time.monotonic() + 20
        while vm_of(simcloud, vm["id"])["state"] != "Starting":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        root = root_of(simcloud, vm["id"])
        _refused_and_nothing_started(simcloud, root, 431, "is Starting; its disks move when it is Stopped",
                                     storageid=other_pool(simcloud, root))  # fmt: skip
        simcloud.ok(started)
    finally:
        _delay(simcloud, "start_vm", 0.0)


def test_refused_livemigrate_false_for_a_running_vm(simcloud: Cloud) -> None:
    vm = deploy(simcloud, start=True)
    vol = new_volume(simcloud, pool=simcloud.ids["local"], virtualmachineid=vm["id"])
    _refused_and_nothing_started(simcloud, vol, 431, "Parameter livemigrate is false",
                                 storageid=simcloud.ids["shared"], livemigrate=False)  # fmt: skip


def test_refused_when_storage_motion_is_off(simcloud: Cloud) -> None:
    """The capability gate: with storagemotionenabled false for the hypervisor, a live move is refused
    (an offline one still runs, as in CloudStack)."""
    api = simcloud.api()
    caps = api.listHypervisorCapabilities(hypervisor="Simulator")["hypervisorCapabilities"][0]
    api.updateHypervisorCapabilities(id=caps["id"], storagemotionenabled=False)
    try:
        assert (
            api.listHypervisorCapabilities(id=caps["id"])["hypervisorCapabilities"][0]["storagemotionenabled"] is False
        )
        vm = deploy(simcloud, start=True)
        vol = new_volume(simcloud, pool=simcloud.ids["local"], virtualmachineid=vm["id"])
        _refused_and_nothing_started(simcloud, vol, 431, "livemigrate: storage motion is disabled",
                                     storageid=simcloud.ids["shared"])  # fmt: skip
        detached = new_volume(simcloud, pool=simcloud.ids["local"])
        simcloud.ok(api.migrateVolume(volumeid=detached["id"], storageid=simcloud.ids["shared"]))
    finally:
        api.updateHypervisorCapabilities(id=caps["id"], storagemotionenabled=True)


def test_refused_unknown_ids(simcloud: Cloud) -> None:
    vol = new_volume(simcloud, pool=simcloud.ids["local"])
    _refused_and_nothing_started(simcloud, vol, 431, "storageid", storageid="00000000-0000-0000-0000-000000000000")
    code, text = refused(simcloud.api().migrateVolume, volumeid="00000000-0000-0000-0000-000000000000",
                         storageid=simcloud.ids["shared"])  # fmt: skip
    assert code == 431 and "volumeid" in text, text
