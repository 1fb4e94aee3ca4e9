"""Hibernate on the simulator, each operation stopped after each of its steps and recovered: the three
promises hold (the job ends, nothing left transitional, the database's layers match the simulator's), and
the VM is where the job's outcome says, with its memory file exactly when it is Hibernated.

hibernateVirtualMachine: Hibernated with one memory file, or Running with none.
startVirtualMachine of a hibernated VM: Running with no memory file, or still Hibernated with its file.
destroyVirtualMachine of a hibernated VM: Destroyed with no file, or Hibernated with it."""

from __future__ import annotations

from typing import Any

from conftest import FaultCloud
from helpers.faultlib import Promises, run_fault_matrix


def _deploy(cloud: FaultCloud) -> str:
    started = cloud.api().deployVirtualMachine(zoneid=cloud.ids["zone"], serviceofferingid=cloud.ids["offering"],
                                               templateid=cloud.ids["template"], name=cloud.name("hb"))  # fmt: skip
    cloud.ok(started)
    return str(started["id"])


def _state(cloud: FaultCloud, vm_id: str) -> str:
    return str(cloud.api().listVirtualMachines(id=vm_id, listall=True)["virtualmachine"][0]["state"])


def _memory(cloud: FaultCloud, vm_id: str) -> list[Any]:
    """The VM's live memory layers (database) whose record the simulator has."""
    rows = cloud.server.sql(
        "SELECT pool_id, path FROM layers WHERE vm_id = ? AND kind = 'memory' AND removed IS NULL", vm_id
    )
    files = cloud.files()
    assert all((str(p), str(path)) in files for p, path in rows), (rows, files)
    return list(rows)


def _consistent(cloud: FaultCloud, vm_id: str, ok: bool, good: str, bad: str) -> None:
    state = _state(cloud, vm_id)
    assert state == (good if ok else bad), (state, ok)
    assert len(_memory(cloud, vm_id)) == (1 if state == "Hibernated" else 0), state


def _to(cloud: FaultCloud, vm_id: str, state: str) -> None:
    """Brings the VM to Running or Hibernated without a fault (the fault file names another job kind)."""
    now = _state(cloud, vm_id)
    if now == state:
        return
    if state == "Running":
        cloud.ok(cloud.api().startVirtualMachine(id=vm_id))
    else:
        if now != "Running":
            cloud.ok(cloud.api().startVirtualMachine(id=vm_id))
        cloud.ok(cloud.api().hibernateVirtualMachine(id=vm_id))


def test_faults_hibernate(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud)

    def start() -> str:
        _to(simcloud, vm, "Running")
        return str(simcloud.api().hibernateVirtualMachine(id=vm)["jobid"])

    def after_each(_step: str, found: Promises) -> None:
        _consistent(simcloud, vm, found.job["jobstatus"] == 1, "Hibernated", "Running")

    names = run_fault_matrix(simcloud.server, simcloud.api(), simcloud.fault_file, "vm.hibernate", start,
                             simcloud.files, after_each)  # fmt: skip
    assert names == ["plan", "save", "hibernated"], names
    simcloud.ok(simcloud.api().destroyVirtualMachine(id=vm, expunge=True))


def test_faults_resume_and_destroy_hibernated(simcloud: FaultCloud) -> None:
    vm = _deploy(simcloud)

    def resume() -> str:
        _to(simcloud, vm, "Hibernated")
        return str(simcloud.api().startVirtualMachine(id=vm)["jobid"])

    def resumed(_step: str, found: Promises) -> None:
        _consistent(simcloud, vm, found.job["jobstatus"] == 1, "Running", "Hibernated")

    names = run_fault_matrix(simcloud.server, simcloud.api(), simcloud.fault_file, "vm.start", resume,
                             simcloud.files, resumed)  # fmt: skip
    assert names == ["plan", "start", "running", "forget memory"], names

    made: list[str] = []

    def destroy() -> str:
        made.append(_deploy(simcloud))
        _to(simcloud, made[-1], "Hibernated")
        return str(simcloud.api().destroyVirtualMachine(id=made[-1])["jobid"])

    def destroyed(_step: str, found: Promises) -> None:
        _consistent(simcloud, made[-1], found.job["jobstatus"] == 1, "Destroyed", "Hibernated")

    names = run_fault_matrix(simcloud.server, simcloud.api(), simcloud.fault_file, "vm.destroy", destroy,
                             simcloud.files, destroyed)  # fmt: skip
    assert "forget memory" in names, names
    for vm_id in [vm, *made]:
        if _state(simcloud, vm_id) != "Destroyed":
            simcloud.ok(simcloud.api().destroyVirtualMachine(id=vm_id))
        simcloud.ok(simcloud.api().expungeVirtualMachine(id=vm_id))
