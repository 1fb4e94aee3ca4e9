"""A small simulated cloud for engine tests: one zone, a simulator host with its local pool, an image
store, a template (the simulator records http templates without fetching them) and an offering."""

from __future__ import annotations

import sys
from pathlib import Path

from cs import CloudStack

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from helpers.agentproc import AgentProcess  # noqa: E402
from helpers.serverproc import wait_job  # noqa: E402


def simulated_cloud(api: CloudStack, agent: AgentProcess, store: Path) -> dict[str, str]:
    zone = api.createZone(name="z-recovery")["zone"]
    pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor="Simulator")["cluster"][0]
    host = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"], url=agent.base_url,
                       username="x", password=agent.token, hypervisor="Simulator")["host"][0]  # fmt: skip
    store.mkdir()
    api.addImageStore(url=f"file://localhost{store}", provider="NFS", zoneid=zone["id"])
    # The simulator records http templates without fetching them.
    tmpl = api.registerTemplate(name="t", displaytext="t", url="http://images.invalid/t.qcow2", format="QCOW2",
                                hypervisor="Simulator", zoneid=zone["id"])["template"][0]  # fmt: skip
    assert wait_job(api, tmpl["jobid"])["jobstatus"] == 1
    offering = api.createServiceOffering(
        name="s", displaytext="s", cpunumber=1, cpuspeed=1000, memory=128, storagetype="local"
    )
    disk = api.createDiskOffering(name="d", displaytext="d", disksize=1, storagetype="local")["diskoffering"]
    return {
        "disk_offering": disk["id"],
        "zone": zone["id"],
        "host": host["id"],
        "template": tmpl["id"],
        "offering": offering["serviceoffering"]["id"],
    }
