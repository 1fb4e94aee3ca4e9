"""A one-host QEMU cloud for the compute tests that need a real guest (VM snapshots, hibernate): a server, a
QEMU agent under TCG, a cluster pool, an image store with the tiny guest as a template, and offerings."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack

from helpers.agentproc import AgentProcess, start_agent
from helpers.faultlib import kill_qemus_under
from helpers.serverproc import ServerProcess, start_server, wait_job
from strato.image.integrity import verify_image
from strato.protocol.messages import GetConsoleLog


class One:
    def __init__(self, base: Path, server: ServerProcess, agent: AgentProcess, ids: dict[str, str]) -> None:
        self.base, self.server, self.agent, self.ids = base, server, agent, ids

    def api(self) -> CloudStack:
        return self.server.cs(timeout=120)

    def ok(self, started: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
        job = wait_job(self.api(), started["jobid"], timeout)
        assert job["jobstatus"] == 1, (job["cmd"], job.get("jobresult"))
        return dict(job.get("jobresult") or {})

    def console(self, vm: dict[str, Any]) -> str:
        return self.agent.client(timeout=30).call(GetConsoleLog(name=vm["instancename"], tail_bytes=None)).text

    def wait_console(self, vm: dict[str, Any], marker: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.console(vm)
            if marker in text:
                return text
            assert time.monotonic() < deadline, f"no {marker!r} on the console:\n{text[-3000:]}"
            time.sleep(0.5)

    def data_disk_file(self, vm_id: str) -> Path:
        vol = next(v for v in self.api().listVolumes(virtualmachineid=vm_id)["volume"] if v["type"] == "DATADISK")
        (path,) = self.server.sql(
            "SELECT p.path, l.path FROM volumes v JOIN layers l ON l.id = v.top_layer_id "
            "JOIN storage_pools p ON p.id = l.pool_id WHERE v.id = ?", vol["id"]
        )  # fmt: skip
        return Path(path[0]) / path[1]

    def generations(self, vm_id: str) -> set[int]:
        report = verify_image(self.data_disk_file(vm_id))
        assert report.ok, report.summary()
        return set(report.generations.values())


@contextmanager
def one_qemu_host(base: Path, prefix: str, env: dict[str, str] | None = None) -> Iterator[One]:
    """The cloud in `base` (removed at the end, its QEMUs killed), names starting with `prefix`; `env`
    is added to the server's environment (e.g. a fault file)."""
    from strato.image.tiny import default_image_path

    if shutil.which("qemu-system-x86_64") is None or not default_image_path().is_file():
        pytest.skip("QEMU and the tiny guest image are needed")
    server = start_server(base / "server", env=env)
    agent: AgentProcess | None = None
    cloud: One | None = None
    try:
        agent = start_agent(base / "agent", token=f"{prefix}-{uuid.uuid4().hex[:6]}", driver="qemu", accel="tcg")
        api = server.cs(timeout=120)
        zone = api.createZone(name=f"{prefix}-{uuid.uuid4().hex[:6]}")["zone"]
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
        cloud = One(base, server, agent, ids)
        yield cloud
    finally:
        server.stop()
        if cloud is not None:
            cloud.agent.stop()  # the agent of now: a test may have restarted it
        if agent is not None:
            agent.stop()
        kill_qemus_under(base)
        shutil.rmtree(base, ignore_errors=True)
