"""A small cloud on one simulator agent, for API tests that need VMs, volumes and templates: a zone,
pod, cluster and host, an image store, a public template and a service and disk offering."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from cs import CloudStack

from helpers.agentproc import AgentProcess
from helpers.serverproc import wait_job


@dataclass
class SimCloud:
    zone: str
    template: str
    offering: str
    disk: str


def build_sim_cloud(api: CloudStack, agent: AgentProcess, base: Path) -> SimCloud:
    tag = uuid.uuid4().hex[:6]
    zone = api.createZone(name=f"sz-{tag}")["zone"]
    pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor="Simulator")["cluster"][0]
    api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"], url=agent.base_url, username="x",
                password=agent.token, hypervisor="Simulator")  # fmt: skip
    shared = base / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    api.createStoragePool(name="shared", zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"], scope="cluster",
                          url=f"SharedMountPoint://localhost{shared}")  # fmt: skip
    store = base / "store"
    store.mkdir(parents=True, exist_ok=True)
    api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store}", zoneid=zone["id"])
    tmpl = api.registerTemplate(name="t", displaytext="t", url="http://images.invalid/t.qcow2", format="QCOW2",
                                hypervisor="Simulator", zoneid=zone["id"], ostypeid="Other Linux (64-bit)",
                                ispublic=True)["template"][0]  # fmt: skip
    assert wait_job(api, tmpl["jobid"], 120)["jobstatus"] == 1
    offering = api.createServiceOffering(name="s", displaytext="s", cpunumber=1, cpuspeed=1000, memory=128)
    disk = api.createDiskOffering(name="d", displaytext="d", disksize=1)["diskoffering"]
    return SimCloud(zone["id"], tmpl["id"], offering["serviceoffering"]["id"], disk["id"])


def deploy(client: CloudStack, cloud: SimCloud, name: str) -> str:
    """A running VM of the client's account; its id."""
    started = client.deployVirtualMachine(zoneid=cloud.zone, serviceofferingid=cloud.offering,
                                          templateid=cloud.template, name=name)  # fmt: skip
    job = wait_job(client, started["jobid"], 120)
    assert job["jobstatus"] == 1, job
    return str(started["id"])
