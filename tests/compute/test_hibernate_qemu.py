"""Hibernate on real QEMU (TCG, the tiny guest): the guest sleeps after booting, is hibernated during
the sleep (its memory to a file on the root disk's pool, no QEMU left), then started: it resumes from the
file and finishes that sleep, and its console (a fresh log for the new QEMU) shows no second boot."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from computelib import processes_mentioning
from test_vm_snapshots_qemu import One

from helpers.agentproc import AgentProcess, start_agent
from helpers.faultlib import kill_qemus_under
from helpers.serverproc import start_server, wait_job

pytestmark = [pytest.mark.qemu, pytest.mark.xdist_group("qemu-hibernate")]


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[One]:
    from strato.image.tiny import default_image_path

    if shutil.which("qemu-system-x86_64") is None or not default_image_path().is_file():
        pytest.skip("QEMU and the tiny guest image are needed")
    base = tmp_path_factory.mktemp("hbq")
    server = start_server(base / "server")
    agent: AgentProcess | None = None
    try:
        agent = start_agent(base / "agent", token=f"hb-{uuid.uuid4().hex[:6]}", driver="qemu", accel="tcg")
        api = server.cs(timeout=120)
        zone = api.createZone(name=f"hb-{uuid.uuid4().hex[:6]}")["zone"]
        pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
        cluster = api.addCluster(clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM")["cluster"][0]
        api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"], url=agent.base_url, username="x",
                    password=agent.token, hypervisor="KVM")  # fmt: skip
        shared = base / "shared"
        shared.mkdir()
        api.createStoragePool(name="shared", zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"],
                              scope="cluster", url=f"SharedMountPoint://localhost{shared}")  # fmt: skip
        store = base / "store"
        store.mkdir()
        api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store}", zoneid=zone["id"])
        image = base / "tiny.qcow2"
        shutil.copyfile(default_image_path(), image)
        tmpl = api.registerTemplate(
            name="t", displaytext="t", url=f"file://{image}", format="QCOW2", hypervisor="KVM", zoneid=zone["id"]
        )["template"][0]
        assert wait_job(api, tmpl["jobid"], 120)["jobstatus"] == 1
        offering = api.createServiceOffering(name="s", displaytext="s", cpunumber=1, cpuspeed=500, memory=128)
        disk = api.createDiskOffering(name="d", displaytext="d", disksize=1)["diskoffering"]
        ids = {"zone": zone["id"], "template": tmpl["id"], "offering": offering["serviceoffering"]["id"],
               "disk": disk["id"]}  # fmt: skip
        yield One(base, server, agent, ids)
    finally:
        server.stop()
        if agent is not None:
            agent.stop()
        kill_qemus_under(base)
        shutil.rmtree(base, ignore_errors=True)


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
