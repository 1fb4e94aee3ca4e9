"""Hibernate on real QEMU (TCG, the tiny guest): the guest sleeps after booting, is hibernated during
the sleep (its memory to a file on the root disk's pool, no QEMU left), then started: it resumes from the
file and finishes that sleep, and its console (a fresh log for the new QEMU) shows no second boot."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from computelib import processes_mentioning
from qemuone import One, one_qemu_host

from helpers.serverproc import wait_job

pytestmark = [pytest.mark.qemu]


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[One]:
    with one_qemu_host(tmp_path_factory.mktemp("hbq"), "hb") as cloud:
        yield cloud


def test_hibernated_guest_resumes_without_booting(one: One) -> None:
    started = one.api().deployVirtualMachine(zoneid=one.ids["zone"], serviceofferingid=one.ids["offering"],
                                             templateid=one.ids["template"], name=f"hb-{uuid.uuid4().hex[:6]}",
                                             **{"details[0].guestcommands": "sleep:15;sleep:600"})  # fmt: skip
    assert wait_job(one.api(), started["jobid"], 180)["jobstatus"] == 1
    vm = one.api().listVirtualMachines(id=started["id"])["virtualmachine"][0]
    before = one.wait_console(vm, "STRATO-RUN-BEGIN sleep:15")
    assert before.count("STRATO-TINY-BOOTED") == 1 and "STRATO-RUN-END sleep:15" not in before, before[-2000:]

    one.ok(one.api().hibernateVirtualMachine(id=vm["id"]))
    assert one.api().listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Hibernated"
    ((pool_path, mem_path),) = one.server.sql(
        "SELECT p.path, l.path FROM layers l JOIN storage_pools p ON p.id = l.pool_id "
        "WHERE l.vm_id = ? AND l.kind = 'memory' AND l.removed IS NULL", vm["id"]
    )  # fmt: skip
    memory_file = Path(pool_path) / mem_path
    assert memory_file.is_file() and memory_file.stat().st_size > 0
    left = [c for _pid, c in processes_mentioning(vm["instancename"]) if "qemu-system" in c]
    assert not left, "a QEMU is left for the hibernated VM"

    one.ok(one.api().startVirtualMachine(id=vm["id"]))
    text = one.wait_console(vm, "STRATO-RUN-END sleep:15 rc=0", timeout=90)
    assert "STRATO-TINY-BOOTED" not in text, text[-2000:]  # it went on from its sleep: no second boot
    assert not memory_file.exists()
    one.ok(one.api().destroyVirtualMachine(id=vm["id"], expunge=True))
