"""The VM life cycle on the simulator, each operation stopped after each of its steps and recovered: the
three promises hold, and the VM is in the state the job's outcome says (the new one when it succeeded, the
one it had when it failed), with its disks still there."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import FaultCloud
from helpers.faultlib import Promises, run_fault_matrix


def _deploy(cloud: FaultCloud, start: bool = True, data_disk: bool = False) -> str:
    extra: dict[str, Any] = {"diskofferingid": cloud.ids["disk"]} if data_disk else {}
    started = cloud.api().deployVirtualMachine(
        zoneid=cloud.ids["zone"],
        serviceofferingid=cloud.ids["offering"],
        templateid=cloud.ids["template"],
        name=cloud.name("fl"),
        startvm=start,
        **extra,
    )
    cloud.ok(started)
    return str(started["id"])


def _vm(cloud: FaultCloud, vm_id: str) -> dict[str, Any] | None:
    found = cloud.api().listVirtualMachines(id=vm_id, listall=True).get("virtualmachine", [])
    return dict(found[0]) if found else None


def _volumes(cloud: FaultCloud, vm_id: str) -> list[dict[str, Any]]:
    return list(cloud.api().listVolumes(virtualmachineid=vm_id, listall=True).get("volume", []))


def _expunge(cloud: FaultCloud, vm_id: str) -> None:
    """Expunges the VM and deletes the data disks it leaves, so that runs do not pile up."""
    vm = _vm(cloud, vm_id)
    if vm is None:
        return
    data = [v["id"] for v in _volumes(cloud, vm_id) if v["type"] == "DATADISK"]
    if vm["state"] in ("Running", "Stopped", "Error"):
        cloud.ok(cloud.api().destroyVirtualMachine(id=vm_id, expunge=True))
    else:
        cloud.ok(cloud.api().expungeVirtualMachine(id=vm_id))
    for vol_id in data:
        cloud.api().deleteVolume(id=vol_id)


def _matrix(
    cloud: FaultCloud,
    kind: str,
    prepare: Callable[[], str],
    act: Callable[[str], dict[str, Any]],
    check: Callable[[str, Promises], None],
    files: Callable[[], set[tuple[str, str]]] | None = None,
) -> list[str]:
    """Per run: `prepare` makes a VM, `act` starts the operation on it; `check` looks at the outcome."""
    made: list[str] = []

    def start() -> str:
        made.append(prepare())
        return str(act(made[-1])["jobid"])

    def after_each(_step: str, found: Promises) -> None:
        try:
            check(made[-1], found)
        finally:
            _expunge(cloud, made[-1])

    return run_fault_matrix(
        cloud.server, cloud.api(), cloud.fault_file, kind, start, files or cloud.files, after_each=after_each
    )


def _ok(found: Promises) -> bool:
    return bool(found.job["jobstatus"] == 1)


def test_start(simcloud: FaultCloud) -> None:
    def check(vm_id: str, found: Promises) -> None:
        vm = _vm(simcloud, vm_id)
        assert vm is not None and vm["state"] == ("Running" if _ok(found) else "Stopped"), (vm, found.job)
        assert len(_volumes(simcloud, vm_id)) == 1

    names = _matrix(simcloud, "vm.start", lambda: _deploy(simcloud, start=False),
                    lambda vm: simcloud.api().startVirtualMachine(id=vm), check)  # fmt: skip
    assert names == ["plan", "start", "running", "forget memory"], names  # the last: a hibernated VM's file


def test_stop(simcloud: FaultCloud) -> None:
    def check(vm_id: str, found: Promises) -> None:
        vm = _vm(simcloud, vm_id)
        assert vm is not None and vm["state"] == ("Stopped" if _ok(found) else "Running"), (vm, found.job)
        # Stop only goes forward: a crash at any step still ends with the VM stopped.
        assert _ok(found), found.job

    names = _matrix(simcloud, "vm.stop", lambda: _deploy(simcloud),
                    lambda vm: simcloud.api().stopVirtualMachine(id=vm), check)  # fmt: skip
    assert names == ["stopping", "stop", "stopped"], names


def test_reboot(simcloud: FaultCloud) -> None:
    def check(vm_id: str, found: Promises) -> None:
        vm = _vm(simcloud, vm_id)
        assert _ok(found) and vm is not None and vm["state"] == "Running", (vm, found.job)

    _matrix(simcloud, "vm.reboot", lambda: _deploy(simcloud),
            lambda vm: simcloud.api().rebootVirtualMachine(id=vm), check)  # fmt: skip


def test_destroy(simcloud: FaultCloud) -> None:
    def check(vm_id: str, found: Promises) -> None:
        vm = _vm(simcloud, vm_id)
        assert _ok(found) and vm is not None and vm["state"] == "Destroyed", (vm, found.job)
        vols = _volumes(simcloud, vm_id)
        assert sorted(v["type"] for v in vols) == ["DATADISK", "ROOT"], vols
        # Destroyed, not gone: it can be recovered, disks and all.
        assert simcloud.api().recoverVirtualMachine(id=vm_id)["virtualmachine"]["state"] == "Stopped"

    names = _matrix(simcloud, "vm.destroy", lambda: _deploy(simcloud, data_disk=True),
                    lambda vm: simcloud.api().destroyVirtualMachine(id=vm), check)  # fmt: skip
    assert names == ["stop", "destroyed", "forget memory"], names


def test_destroy_with_expunge(simcloud: FaultCloud) -> None:
    data_disk: dict[str, str] = {}

    def prepare() -> str:
        vm_id = _deploy(simcloud, data_disk=True)
        data_disk[vm_id] = next(v["id"] for v in _volumes(simcloud, vm_id) if v["type"] == "DATADISK")
        return vm_id

    def check(vm_id: str, found: Promises) -> None:
        assert _ok(found), found.job
        assert _vm(simcloud, vm_id) is None
        # The data disk stays, detached and usable (its layer's file is there: the promises checked it).
        [vol] = simcloud.api().listVolumes(id=data_disk[vm_id], listall=True)["volume"]
        assert vol["state"] == "Ready" and not vol.get("virtualmachineid"), vol
        simcloud.api().deleteVolume(id=vol["id"])

    names = _matrix(simcloud, "vm.destroy", prepare,
                    lambda vm: simcloud.api().destroyVirtualMachine(id=vm, expunge=True), check)  # fmt: skip
    assert names == [
        "stop",
        "destroyed",
        "forget memory",
        "expunging",
        "remove disks",
        "config drive",
        "run files",
        "expunged",
    ]


def _destroyed(cloud: FaultCloud) -> str:
    vm_id = _deploy(cloud)
    cloud.ok(cloud.api().destroyVirtualMachine(id=vm_id))
    return vm_id


def _gone(cloud: FaultCloud) -> Callable[[str, Promises], None]:
    def check(vm_id: str, found: Promises) -> None:
        assert _ok(found) and _vm(cloud, vm_id) is None, (_vm(cloud, vm_id), found.job)
        assert _volumes(cloud, vm_id) == []

    return check


def test_expunge(simcloud: FaultCloud) -> None:
    names = _matrix(simcloud, "vm.expunge", lambda: _destroyed(simcloud),
                    lambda vm: simcloud.api().expungeVirtualMachine(id=vm), _gone(simcloud))  # fmt: skip
    assert names == ["expunging", "remove disks", "config drive", "run files", "expunged"], names


def test_expunge_queued_by_housekeeping(simcloud: FaultCloud) -> None:
    """The periodic expunge (every expunge.interval seconds, here 1) picks up a VM destroyed longer ago
    than expunge.delay."""
    server = simcloud.server
    api = simcloud.api()
    api.updateConfiguration(name="expunge.interval", value="1")

    def act(vm_id: str) -> dict[str, Any]:
        server.sql("UPDATE virtual_machines SET destroyed_at = '2000-01-01 00:00:00.000000' WHERE id = ?", vm_id)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            rows = server.sql("SELECT id FROM jobs WHERE kind = 'vm.expunge' AND instance_id = ?", vm_id)
            if rows:
                return {"jobid": rows[0][0]}
            time.sleep(0.3)
        raise AssertionError("the periodic expunge queued no job")

    try:
        _matrix(simcloud, "vm.expunge", lambda: _destroyed(simcloud), act, _gone(simcloud))
    finally:
        api.updateConfiguration(name="expunge.interval", value="10")


def test_scale(simcloud: FaultCloud) -> None:
    bigger = simcloud.api().createServiceOffering(name=simcloud.name("big"), displaytext="b", cpunumber=2,
                                                  cpuspeed=1000, memory=256)["serviceoffering"]  # fmt: skip

    def check(vm_id: str, found: Promises) -> None:
        vm = _vm(simcloud, vm_id)
        assert vm is not None and vm["state"] == "Stopped", vm
        want = bigger["id"] if _ok(found) else simcloud.ids["offering"]
        assert vm["serviceofferingid"] == want and vm["memory"] == (256 if _ok(found) else 128), vm

    def act(vm_id: str) -> dict[str, Any]:
        return dict(simcloud.api().scaleVirtualMachine(id=vm_id, serviceofferingid=bigger["id"]))

    names = _matrix(simcloud, "vm.scale", lambda: _deploy(simcloud, start=False), act, check)
    assert names == ["scale"], names


@pytest.fixture(scope="module")
def iso(simcloud: FaultCloud) -> str:
    api = simcloud.api()
    registered = api.registerIso(name=simcloud.name("iso"), displaytext="iso", url="http://images.invalid/x.iso",
                                 zoneid=simcloud.ids["zone"], ispublic=True, bootable=False)["iso"][0]  # fmt: skip
    deadline = time.monotonic() + 60
    while api.listIsos(id=registered["id"], isofilter="all")["iso"][0].get("isready") is not True:
        assert time.monotonic() < deadline, api.listIsos(id=registered["id"], isofilter="all")
        time.sleep(0.3)
    return str(registered["id"])


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_attach_iso(simcloud: FaultCloud, iso: str, running: bool) -> None:
    def check(vm_id: str, found: Promises) -> None:
        vm = _vm(simcloud, vm_id)
        assert vm is not None and vm["state"] == ("Running" if running else "Stopped"), vm
        assert vm.get("isoid") == (iso if _ok(found) else None), (vm, found.job)

    names = _matrix(simcloud, "vm.iso.attach", lambda: _deploy(simcloud, start=running),
                    lambda vm: simcloud.api().attachIso(id=iso, virtualmachineid=vm), check)  # fmt: skip
    assert names == ["cd drive", "record"], names


def test_detach_iso(simcloud: FaultCloud, iso: str) -> None:
    def prepare() -> str:
        vm_id = _deploy(simcloud)
        simcloud.ok(simcloud.api().attachIso(id=iso, virtualmachineid=vm_id))
        return vm_id

    def check(vm_id: str, found: Promises) -> None:
        vm = _vm(simcloud, vm_id)
        assert vm is not None and vm["state"] == "Running", vm
        assert vm.get("isoid") == (None if _ok(found) else iso), (vm, found.job)

    names = _matrix(simcloud, "vm.iso.detach", prepare,
                    lambda vm: simcloud.api().detachIso(virtualmachineid=vm), check)  # fmt: skip
    assert names == ["cd drive", "record"], names
