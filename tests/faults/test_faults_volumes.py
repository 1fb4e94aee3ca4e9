"""The volume operations stopped after each of their steps, then recovered: the three promises hold, and
what the user sees is stable and consistent with the job's outcome.

createVolume on a pool: Ready, or gone. createVolume with a VM: Ready and attached, or gone (the commit
point is "ready": past it the job finishes forward). attachVolume: attached (and, on a running VM, plugged
into it: the agent's disks equal the database's) or detached and Ready, its file intact. attachVolume of an
Allocated volume (created on a pool at the attach): Ready, attached and plugged, or Allocated again with no
pool and no file (the harness checks no file is left that the database does not know). detachVolume and
resizeVolume: finished (both resume). deleteVolume: gone, its files with it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import FaultCloud
from helpers.faultlib import Promises, run_fault_matrix, steps_of
from strato.protocol.messages import GetConsoleLog, GetVmStats

GIB = 1024**3
Check = Callable[[str, Promises], None]


# --- what the user sees -------------------------------------------------------------------------------


def _vol(cloud: FaultCloud, vol_id: str) -> dict[str, Any] | None:
    found = cloud.api().listVolumes(id=vol_id, listall=True).get("volume", [])
    return dict(found[0]) if found else None


def _wait_gone(cloud: FaultCloud, vol_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _vol(cloud, vol_id) is not None:
        assert time.monotonic() < deadline, f"volume {vol_id} still listed"
        time.sleep(0.2)


def _delete(cloud: FaultCloud, vol_id: str) -> None:
    """deleteVolume answers at once; its job removes the files: waits for the volume to be gone."""
    cloud.api().deleteVolume(id=vol_id)
    _wait_gone(cloud, vol_id)


def _new_volume(cloud: FaultCloud, **params: Any) -> dict[str, Any]:
    """A Ready volume: created on a pool (the cluster pool unless told); without one it would be Allocated."""
    params.setdefault("storageid", cloud.ids["shared"])
    started = cloud.api().createVolume(
        name=cloud.name("fv"), zoneid=cloud.ids["zone"], diskofferingid=cloud.ids["disk"], **params
    )
    cloud.ok(started)
    vol = _vol(cloud, started["id"])
    assert vol is not None and vol["state"] == "Ready", vol
    return vol


def _deploy(cloud: FaultCloud, start: bool) -> dict[str, Any]:
    started = cloud.api().deployVirtualMachine(
        zoneid=cloud.ids["zone"],
        serviceofferingid=cloud.ids["offering"],
        templateid=cloud.ids["template"],
        name=cloud.name("fvm"),
        startvm=start,
    )
    cloud.ok(started, timeout=300)
    return dict(cloud.api().listVirtualMachines(id=started["id"], listall=True)["virtualmachine"][0])


def _plugged(cloud: FaultCloud, vm: dict[str, Any]) -> set[int]:
    """The device ids of the disks the hypervisor gives the running VM (the agent's view)."""
    stats = cloud.agent.client().call(GetVmStats(name=vm["instancename"]))
    return {d.device_id for d in stats.disks if d.device_id is not None}


def _attached(cloud: FaultCloud, vm: dict[str, Any]) -> set[int]:
    vols = cloud.api().listVolumes(virtualmachineid=vm["id"], listall=True).get("volume", [])
    return {int(v["deviceid"]) for v in vols}


def _agent_agrees(cloud: FaultCloud, vm: dict[str, Any]) -> None:
    """On a running VM, the disks plugged into it are exactly those the database holds as attached."""
    if vm["state"] == "Running":
        assert _plugged(cloud, vm) == _attached(cloud, vm), (_plugged(cloud, vm), _attached(cloud, vm))


def _detach_if_attached(cloud: FaultCloud, vol_id: str) -> None:
    vol = _vol(cloud, vol_id)
    if vol is not None and vol.get("virtualmachineid"):
        cloud.ok(cloud.api().detachVolume(id=vol_id))


def _matrix(cloud: FaultCloud, kind: str, start: Callable[[], str], check: Check) -> list[str]:
    return run_fault_matrix(cloud.server, cloud.api(), cloud.fault_file, kind, start, cloud.files, after_each=check)


def _latest_job(cloud: FaultCloud, kind: str, instance_id: str) -> str:
    rows = cloud.server.sql(
        "SELECT id FROM jobs WHERE kind = ? AND instance_id = ? ORDER BY seq DESC LIMIT 1", kind, instance_id
    )
    assert rows, f"no {kind} job for {instance_id}"
    return str(rows[0][0])


# --- createVolume -------------------------------------------------------------------------------------


def test_create_on_the_simulator(simcloud: FaultCloud) -> None:
    made: list[str] = []

    def start() -> str:
        started = simcloud.api().createVolume(
            name=simcloud.name("fc"),
            zoneid=simcloud.ids["zone"],
            diskofferingid=simcloud.ids["disk"],
            storageid=simcloud.ids["shared"],
        )
        made.append(started["id"])
        return str(started["jobid"])

    def check(_step: str, found: Promises) -> None:
        vol = _vol(simcloud, made[-1])
        if found.job["jobstatus"] == 1:
            assert vol is not None and vol["state"] == "Ready" and vol["size"] == GIB, vol
            _delete(simcloud, made[-1])
        else:
            assert vol is None, vol

    names = _matrix(simcloud, "volume.create", start, check)
    assert names == ["place", "create layer", "ready"], names


def test_create_with_a_vm_on_the_simulator(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud, start=True)
    made: list[str] = []

    def start() -> str:
        started = simcloud.api().createVolume(
            name=simcloud.name("fcv"), diskofferingid=simcloud.ids["disk"], virtualmachineid=vm["id"]
        )
        made.append(started["id"])
        return str(started["jobid"])

    def check(step: str, found: Promises) -> None:
        vol = _vol(simcloud, made[-1])
        _agent_agrees(simcloud, vm)
        if found.job["jobstatus"] == 1:
            assert vol is not None and vol["state"] == "Ready" and vol.get("virtualmachineid") == vm["id"], vol
            _detach_if_attached(simcloud, made[-1])
            _delete(simcloud, made[-1])
        elif step in ("(no fault)", "place", "create layer"):  # before the commit point: undone
            assert vol is None, vol
        else:  # past it a failure may only take back the attach: the volume stays, Ready and detached
            assert vol is not None and vol["state"] == "Ready" and not vol.get("virtualmachineid"), vol
            _delete(simcloud, made[-1])

    names = _matrix(simcloud, "volume.create", start, check)
    assert names == ["place", "create layer", "ready", "record attachment", "hot-plug"], names
    simcloud.ok(simcloud.api().destroyVirtualMachine(id=vm["id"], expunge=True))


# --- attachVolume -------------------------------------------------------------------------------------

ATTACH_STEPS = ["record attachment", "place", "create layer", "hot-plug", "ready"]
"""For a Ready volume "place" and "create layer" do nothing; an Allocated one is created on a pool there."""


def _attach_matrix(
    cloud: FaultCloud,
    vm: dict[str, Any],
    vol: dict[str, Any] | None = None,
    check_file: Callable[[str], None] | None = None,
) -> None:
    vol = vol or _new_volume(cloud)

    def start() -> str:
        return str(cloud.api().attachVolume(id=vol["id"], virtualmachineid=vm["id"])["jobid"])

    def check(_step: str, found: Promises) -> None:
        now = _vol(cloud, vol["id"])
        assert now is not None and now["state"] == "Ready", now
        _agent_agrees(cloud, vm)
        if found.job["jobstatus"] == 1:
            assert now.get("virtualmachineid") == vm["id"], now
        else:
            assert not now.get("virtualmachineid"), now
        if check_file is not None:
            check_file(vol["id"])
        _detach_if_attached(cloud, vol["id"])
        _agent_agrees(cloud, vm)

    names = _matrix(cloud, "volume.attach", start, check)
    assert names == ATTACH_STEPS, names
    _delete(cloud, vol["id"])


def test_attach_to_a_stopped_vm_on_the_simulator(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud, start=False)
    _attach_matrix(simcloud, vm)
    simcloud.ok(simcloud.api().destroyVirtualMachine(id=vm["id"], expunge=True))


def test_attach_to_a_running_vm_on_the_simulator(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud, start=True)
    assert vm["state"] == "Running", vm
    _attach_matrix(simcloud, vm)
    simcloud.ok(simcloud.api().destroyVirtualMachine(id=vm["id"], expunge=True))


def _allocated_attach_matrix(cloud: FaultCloud, vm: dict[str, Any]) -> None:
    """An Allocated volume per run: after each fault it is either Ready, attached (plugged into a running
    VM) on a pool the VM's host reaches, or Allocated again: detached, no pool, its file gone."""
    made: list[str] = []

    def start() -> str:
        vol = cloud.api().createVolume(
            name=cloud.name("fa"), zoneid=cloud.ids["zone"], diskofferingid=cloud.ids["disk"]
        )
        cloud.ok(vol)
        made.append(vol["id"])
        return str(cloud.api().attachVolume(id=vol["id"], virtualmachineid=vm["id"])["jobid"])

    def check(step: str, found: Promises) -> None:
        now = _vol(cloud, made[-1])
        assert now is not None, step
        _agent_agrees(cloud, vm)
        if found.job["jobstatus"] == 1:
            assert now["state"] == "Ready" and now.get("virtualmachineid") == vm["id"], now
            assert now.get("storageid") in (cloud.ids["shared"], cloud.ids["local"]), now
        else:  # before the commit point ("hot-plug"): undone, nothing of the placement left
            assert step in ("record attachment", "place", "create layer"), (step, found.job)
            assert now["state"] == "Allocated" and not now.get("virtualmachineid"), now
            assert not now.get("storageid") and not now.get("path"), now
        _detach_if_attached(cloud, made[-1])
        _agent_agrees(cloud, vm)
        _delete(cloud, made[-1])

    names = _matrix(cloud, "volume.attach", start, check)
    assert names == ATTACH_STEPS, names


def test_attach_an_allocated_volume_to_a_running_vm_on_the_simulator(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud, start=True)
    _allocated_attach_matrix(simcloud, vm)
    simcloud.ok(simcloud.api().destroyVirtualMachine(id=vm["id"], expunge=True))


def test_attach_an_allocated_volume_to_a_stopped_vm_on_the_simulator(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud, start=False)
    _allocated_attach_matrix(simcloud, vm)
    simcloud.ok(simcloud.api().destroyVirtualMachine(id=vm["id"], expunge=True))


def test_create_without_a_pool_has_no_step_on_the_simulator(simcloud: FaultCloud) -> None:
    before = simcloud.files()
    started = simcloud.api().createVolume(
        name=simcloud.name("fn"), zoneid=simcloud.ids["zone"], diskofferingid=simcloud.ids["disk"]
    )
    result = simcloud.ok(started)
    vol = _vol(simcloud, started["id"])
    assert vol is not None and vol["state"] == "Allocated" and not vol.get("storageid"), vol
    assert result.get("volume", {}).get("state") == "Allocated", result
    assert simcloud.files() == before
    assert steps_of(simcloud.server, started["jobid"]) == []
    simcloud.api().deleteVolume(id=vol["id"])
    assert _vol(simcloud, vol["id"]) is None  # no file: the row goes with the answer


# --- detachVolume -------------------------------------------------------------------------------------


def test_detach_from_a_running_vm_on_the_simulator(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud, start=True)
    vol = _new_volume(simcloud)

    def start() -> str:
        simcloud.ok(simcloud.api().attachVolume(id=vol["id"], virtualmachineid=vm["id"]))
        return str(simcloud.api().detachVolume(id=vol["id"])["jobid"])

    def check(_step: str, found: Promises) -> None:
        now = _vol(simcloud, vol["id"])
        assert found.job["jobstatus"] == 1, found.job  # a detach left by a dead server is finished
        assert now is not None and now["state"] == "Ready" and not now.get("virtualmachineid"), now
        _agent_agrees(simcloud, vm)

    names = _matrix(simcloud, "volume.detach", start, check)
    assert names == ["hot-unplug", "record detachment"], names
    _delete(simcloud, vol["id"])
    simcloud.ok(simcloud.api().destroyVirtualMachine(id=vm["id"], expunge=True))


# --- resizeVolume -------------------------------------------------------------------------------------


def _resize_matrix(cloud: FaultCloud, vm: dict[str, Any] | None) -> None:
    vol = _new_volume(cloud)
    if vm is not None:
        cloud.ok(cloud.api().attachVolume(id=vol["id"], virtualmachineid=vm["id"]))
    asked: list[int] = []

    def start() -> str:
        now = _vol(cloud, vol["id"])
        assert now is not None
        asked.append(int(now["size"]) // GIB + 1)
        return str(cloud.api().resizeVolume(id=vol["id"], size=asked[-1])["jobid"])

    def check(_step: str, found: Promises) -> None:
        now = _vol(cloud, vol["id"])
        assert found.job["jobstatus"] == 1, found.job  # a resize left by a dead server is finished
        assert now is not None and now["state"] == "Ready" and now["size"] == asked[-1] * GIB, now
        if vm is not None:
            assert now.get("virtualmachineid") == vm["id"], now
            _agent_agrees(cloud, vm)

    names = _matrix(cloud, "volume.resize", start, check)
    assert names == ["mark resizing", "grow", "record size"], names
    _detach_if_attached(cloud, vol["id"])
    _delete(cloud, vol["id"])


def test_resize_offline_on_the_simulator(simcloud: FaultCloud) -> None:
    _resize_matrix(simcloud, None)


def test_resize_live_on_the_simulator(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud, start=True)
    _resize_matrix(simcloud, vm)
    simcloud.ok(simcloud.api().destroyVirtualMachine(id=vm["id"], expunge=True))


# --- deleteVolume -------------------------------------------------------------------------------------


def test_delete_on_the_simulator(simcloud: FaultCloud) -> None:
    made: list[str] = []

    def start() -> str:
        vol = _new_volume(simcloud)
        made.append(vol["id"])
        simcloud.api().deleteVolume(id=vol["id"])
        return _latest_job(simcloud, "volume.delete", vol["id"])

    def check(_step: str, found: Promises) -> None:
        assert found.job["jobstatus"] == 1, found.job  # a delete left by a dead server is finished
        assert _vol(simcloud, made[-1]) is None

    names = _matrix(simcloud, "volume.delete", start, check)
    assert names == ["remove files", "expunge"], names


# --- attachVolume on QEMU -----------------------------------------------------------------------------

PATTERN = "0x5a"


def _wait_booted(cloud: FaultCloud, vm: dict[str, Any], timeout: float = 240) -> None:
    """Until the guest has booted (its STRATO-DISKS line): only a running OS releases a hot-unplugged disk."""
    deadline = time.monotonic() + timeout
    while (
        "STRATO-DISKS:" not in cloud.agent.client().call(GetConsoleLog(name=vm["instancename"], tail_bytes=None)).text
    ):
        assert time.monotonic() < deadline, f"VM {vm['name']} did not boot"
        time.sleep(1)


def _layer_file(cloud: FaultCloud, vol_id: str) -> Path:
    rows = cloud.server.sql(
        "SELECT l.pool_id, l.path FROM layers l JOIN volumes v ON v.top_layer_id = l.id WHERE v.id = ?", vol_id
    )
    assert rows, f"volume {vol_id} has no top layer"
    pool_id, path = rows[0]
    return cloud.pool_dirs[str(pool_id)] / str(path)


def _qemu_io(path: Path, command: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", *flags, "-f", "qcow2", "-c", command, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_attach_to_a_running_vm_with_qemu(qemucloud: FaultCloud) -> None:
    """After each fault the disk is either attached and visible to the VM (QEMU has the device), or
    detached and Ready; either way its file still holds what was written into it before."""
    vm = _deploy(qemucloud, start=True)
    assert vm["state"] == "Running", vm
    _wait_booted(qemucloud, vm)
    vol = _new_volume(qemucloud, storageid=qemucloud.ids["shared"])
    written = _qemu_io(_layer_file(qemucloud, vol["id"]), f"write -P {PATTERN} 0 64k")
    assert written.returncode == 0, written.stderr

    def intact(vol_id: str) -> None:
        # Read-only and sharing the lock, so that it also reads the file of a disk the VM has open.
        read = _qemu_io(_layer_file(qemucloud, vol_id), f"read -P {PATTERN} 0 64k", "-r", "-U")
        assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, read.stdout + read.stderr

    try:
        _attach_matrix(qemucloud, vm, vol, check_file=intact)
    finally:
        qemucloud.ok(qemucloud.api().destroyVirtualMachine(id=vm["id"], expunge=True), timeout=300)


@pytest.fixture(autouse=True)
def _no_fault_left(request: pytest.FixtureRequest) -> Any:
    """A test that fails half-way must not leave the next one a fault armed."""
    yield
    for name in ("simcloud", "qemucloud"):
        if name in request.fixturenames:
            cloud: FaultCloud = request.getfixturevalue(name)
            cloud.fault_file.write_text("")
