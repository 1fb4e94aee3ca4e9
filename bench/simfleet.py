"""Pieces the scale benches share: a simulator fleet process, a zone to register its hosts in, a template
and a small offering to deploy with, the CPU time of a process, and the database to run on."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cs import CloudStack  # noqa: E402

from helpers import postgres  # noqa: E402
from helpers.agentproc import AgentProcess, start_agent  # noqa: E402
from helpers.serverproc import wait_job  # noqa: E402

TOKEN = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_fleet(base: Path, hosts: int) -> AgentProcess:
    """`hosts` simulator agents in one process (strato.agent.multi), host N at /host-N, token bench-host-N."""
    code = (
        "import sys; from pathlib import Path; from strato.agent.multi import run_simulator_fleet; "
        f"run_simulator_fleet(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], {TOKEN!r})"
    )
    return start_agent(
        base,
        argv=[sys.executable, "-c", code, str(base), str(hosts), "{listen}"],
        health_path="/host-1",
        health_token=f"{TOKEN}-host-1",
        timeout=120,
    )


@dataclass
class Zone:
    """A zone, pod and cluster of simulated hosts, with a cluster-wide pool for root disks, a template and
    a small offering (64 MiB, 100 MHz: 50 VMs a simulated host)."""

    zone: str
    pod: str
    cluster: str
    template: str = ""
    offering: str = ""

    def add_host(self, api: CloudStack, fleet: AgentProcess, n: int) -> dict[str, Any]:
        host: dict[str, Any] = api.addHost(zoneid=self.zone, podid=self.pod, clusterid=self.cluster,
                                           url=f"{fleet.base_url}/host-{n}", username="strato",
                                           password=f"{TOKEN}-host-{n}", hypervisor="Simulator")["host"][0]  # fmt: skip
        return host


def make_zone(api: CloudStack, base: Path) -> Zone:
    zone = api.createZone(name="bench")["zone"]
    pod = api.createPod(name="bench", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername="bench", zoneid=zone["id"], podid=pod["id"], hypervisor="Simulator")[
        "cluster"
    ][0]
    return Zone(zone["id"], pod["id"], cluster["id"])


def prepare_deploys(api: CloudStack, zone: Zone, base: Path) -> None:
    """The shared pool, image store, template and offering of the zone (after its first host)."""
    shared = base / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    api.createStoragePool(name="shared", zoneid=zone.zone, podid=zone.pod, clusterid=zone.cluster, scope="cluster",
                          url=f"SharedMountPoint://localhost{shared}")  # fmt: skip
    store = base / "store"
    store.mkdir(parents=True, exist_ok=True)
    api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store}", zoneid=zone.zone)
    tmpl = api.registerTemplate(name="t", displaytext="t", url="http://images.invalid/t.qcow2", format="QCOW2",
                                hypervisor="Simulator", zoneid=zone.zone, ostypeid="Other Linux (64-bit)",
                                ispublic=True)["template"][0]  # fmt: skip
    assert wait_job(api, tmpl["jobid"], 120)["jobstatus"] == 1
    offering = api.createServiceOffering(name="small", displaytext="s", cpunumber=1, cpuspeed=100, memory=64)
    zone.template, zone.offering = tmpl["id"], offering["serviceoffering"]["id"]


@contextlib.contextmanager
def database(url: str | None, use_postgres: bool) -> Iterator[tuple[str | None, str]]:
    """(database URL or None for SQLite, backend name); a throw-away PostgreSQL with use_postgres."""
    pg: postgres.PostgresServer | None = None
    try:
        if use_postgres and url is None:
            pg = postgres.start_postgres()
            url = pg.create_database("bench")
        yield url, ("PostgreSQL" if url else "SQLite")
    finally:
        if pg is not None:
            pg.stop()
