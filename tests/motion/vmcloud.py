"""A simulated cloud for VM-migration tests: three simulator hosts served by one fleet process (they see
each other's pools, as simulated agents do not talk to each other), host-1 and host-2 in cluster c1 with
the cluster pool `shared1`, host-3 in cluster c2 with `shared2`, each host with its local pool; a
template, offerings (shared and local storage) and a disk offering. The server is started with fault
injection armed by a file, so the step-fault harness can run on it.

`VmCloud.vm()` deploys a VM on a given host with its root disk on a given pool.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from helpers.agentproc import AgentProcess, start_agent  # noqa: E402
from helpers.faultlib import fault_server_env, simulated_layers  # noqa: E402
from helpers.serverproc import ServerProcess, start_server, wait_job  # noqa: E402
from strato.protocol.client import AgentClient  # noqa: E402
from strato.protocol.messages import ConfigureSimulator  # noqa: E402

TOKEN = "vmm"
HOSTS = ("host-1", "host-2", "host-3")


@dataclass
class VmCloud:
    base: Path
    server: ServerProcess
    fleet: AgentProcess
    fault_file: Path
    ids: dict[str, str]
    """zone, c1, c2, host-1..3, local-1..3 (their local pools), shared1, shared2, template, offering,
    local_offering, disk."""

    def api(self, **kwargs: Any) -> CloudStack:
        kwargs.setdefault("timeout", 60)
        return self.server.cs(**kwargs)

    def agent(self, host: str) -> AgentClient:
        """The simulator agent of `host` ("host-1"...)."""
        return self.fleet.client(token=f"{TOKEN}-{host}", path=f"/{host}")

    def configure(self, host: str, command: str, delay_s: float | None = None, fail_count: int | None = None,
                  fail_message: str | None = None) -> None:  # fmt: skip
        self.agent(host).call(
            ConfigureSimulator(command=command, delay_s=delay_s, fail_count=fail_count, fail_message=fail_message)
        )

    def files(self) -> set[tuple[str, str]]:
        """(pool id, path) of every layer record the simulated hosts hold (their own and the fleet's)."""
        return simulated_layers([self.fleet.data_dir / h for h in HOSTS] + [self.fleet.data_dir])

    def name(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:6]}"

    def wait(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        return wait_job(self.api(), job_id, timeout)

    def ok(self, started: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        job = self.wait(started["jobid"], timeout)
        assert job["jobstatus"] == 1, job
        return dict(job.get("jobresult") or {})

    def vm(self, host: str = "host-1", root_pool: str = "shared1", data_pool: str | None = None,
           local: bool = False) -> dict[str, Any]:  # fmt: skip
        """A running VM on `host`, root disk on `root_pool` (and a data disk on `data_pool`)."""
        args: dict[str, Any] = {
            "zoneid": self.ids["zone"],
            "serviceofferingid": self.ids["local_offering" if local else "offering"],
            "templateid": self.ids["template"],
            "name": self.name("mv"),
            "hostid": self.ids[host],
            "rootdiskstorageid": self.ids[root_pool],
        }
        if data_pool:
            args["datadisksdetails[0].diskofferingid"] = self.ids["disk"]
            args["datadisksdetails[0].storageid"] = self.ids[data_pool]
        started = self.api().deployVirtualMachine(**args)
        self.ok(started)
        return dict(self.api().listVirtualMachines(id=started["id"])["virtualmachine"][0])

    def volumes(self, vm_id: str) -> list[dict[str, Any]]:
        vols = self.api().listVolumes(virtualmachineid=vm_id, listall=True).get("volume", [])
        return sorted(vols, key=lambda v: v["deviceid"])

    def expunge(self, vm_id: str) -> None:
        self.ok(self.api().destroyVirtualMachine(id=vm_id, expunge=True))


def _fleet_argv(fleet_dir: Path) -> list[str]:
    code = (
        "import sys; from pathlib import Path; from strato.agent.multi import run_simulator_fleet; "
        f"run_simulator_fleet(Path(sys.argv[1]), {len(HOSTS)}, sys.argv[2], {TOKEN!r})"
    )
    return [sys.executable, "-c", code, str(fleet_dir), "{listen}"]


def _make(base: Path, server: ServerProcess, fleet: AgentProcess, fault_file: Path) -> VmCloud:
    api = server.cs(timeout=60)
    ids: dict[str, str] = {}
    zone = api.createZone(name=f"vmz-{uuid.uuid4().hex[:6]}")["zone"]
    pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
    ids["zone"] = zone["id"]
    for cluster_name in ("c1", "c2"):
        cluster = api.addCluster(clustername=cluster_name, zoneid=zone["id"], podid=pod["id"],
                                 hypervisor="Simulator")["cluster"][0]  # fmt: skip
        ids[cluster_name] = cluster["id"]
    for n, host_name in enumerate(HOSTS, start=1):
        host = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=ids["c1" if n < 3 else "c2"],
                           url=f"{fleet.base_url}/{host_name}", username="x", password=f"{TOKEN}-{host_name}",
                           hypervisor="Simulator")["host"][0]  # fmt: skip
        ids[host_name] = host["id"]
        local = api.listStoragePools(zoneid=zone["id"], hostid=host["id"], scope="host")["storagepool"][0]
        ids[f"local-{n}"] = local["id"]
    for pool_name, cluster_name in (("shared1", "c1"), ("shared2", "c2")):
        url = f"SharedMountPoint://localhost{base}/{pool_name}"
        pool = api.createStoragePool(name=pool_name, zoneid=zone["id"], podid=pod["id"], clusterid=ids[cluster_name],
                                     scope="cluster", url=url)  # fmt: skip
        ids[pool_name] = pool["storagepool"]["id"]
    store = base / "store"
    store.mkdir()
    api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store}", zoneid=zone["id"])
    tmpl = api.registerTemplate(name="t", displaytext="t", url="http://images.invalid/t.qcow2", format="QCOW2",
                                hypervisor="Simulator", zoneid=zone["id"], ostypeid="Other Linux (64-bit)",
                                ispublic=True)["template"][0]  # fmt: skip
    assert wait_job(api, tmpl["jobid"], 60)["jobstatus"] == 1
    ids["template"] = tmpl["id"]
    ids["offering"] = api.createServiceOffering(name="s", displaytext="s", cpunumber=1, cpuspeed=1000,
                                                memory=128)["serviceoffering"]["id"]  # fmt: skip
    local = api.createServiceOffering(name="sl", displaytext="sl", cpunumber=1, cpuspeed=1000, memory=128,
                                      storagetype="local")  # fmt: skip
    ids["local_offering"] = local["serviceoffering"]["id"]
    ids["disk"] = api.createDiskOffering(name="d", displaytext="d", disksize=1)["diskoffering"]["id"]
    return VmCloud(base=base, server=server, fleet=fleet, fault_file=fault_file, ids=ids)


@pytest.fixture(scope="module")
def vmcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmCloud]:
    base = tmp_path_factory.mktemp("vmmotion")
    fault_file = base / "fault"
    server = start_server(base / "server", env=fault_server_env(fault_file))
    fleet: AgentProcess | None = None
    try:
        fleet_dir = base / "fleet"
        fleet = start_agent(fleet_dir, token=f"{TOKEN}-host-1", argv=_fleet_argv(fleet_dir),
                            health_path="/host-1", health_token=f"{TOKEN}-host-1")  # fmt: skip
        yield _make(base, server, fleet, fault_file)
    finally:
        server.stop()
        if fleet is not None:
            fleet.stop()
        shutil.rmtree(base, ignore_errors=True)
