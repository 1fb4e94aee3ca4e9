"""Hosts through real agents over HTTP: addHost (simulator and QEMU), pools on hosts, errors, listHosts,
allocation state, maintenance, deleteHost and listCapacity, against a real server subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException
from hostlib import MakeCluster

from helpers.agentproc import AgentProcess, free_port
from strato.protocol.messages import StartVm, StopVm, VmSpec

StartAgent = Callable[..., AgentProcess]
GIB = 1 << 30


def api_error(exc: pytest.ExceptionInfo[CloudStackApiException]) -> tuple[int, str]:
    """(errorcode, errortext) of a refused API call or of a failed job."""
    err: dict[str, Any] = exc.value.error
    return int(err["errorcode"]), str(err["errortext"])


def statvfs_bytes(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    return total, total - st.f_bfree * st.f_frsize


def qemu_version() -> str:
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"version (\S+)", out.stdout)
    assert match
    return match.group(1)


def meminfo_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


# --- addHost ---------------------------------------------------------------------------------------


def test_add_simulator_host_records_resources_and_local_pool(
    make_cluster: MakeCluster, agent_factory: StartAgent
) -> None:
    cluster = make_cluster("Simulator")
    agent = agent_factory(token="sim-secret")
    host = cluster.add_host(agent, hosttags="fast,ssd")
    assert host["state"] == "Up"
    assert host["resourcestate"] == "Enabled"
    assert host["hypervisor"] == "Simulator"
    assert host["hypervisorversion"] == "strato-simulator-1"
    assert (host["cpunumber"], host["cpuspeed"], host["memorytotal"]) == (16, 2400, 64 * GIB)
    assert host["url"] == agent.base_url
    assert host["ipaddress"] == "127.0.0.1"
    assert host["hosttags"] == "fast,ssd"
    assert host["clusterid"] == cluster.clusterid

    [local] = cluster.pools(hostid=host["id"])
    assert local["scope"] == "HOST"
    assert local["path"] == str(agent.data_dir / "pools" / "local")
    assert local["disksizetotal"] == 1 << 40  # the simulator's default pool capacity
    assert local["disksizeused"] == 0


def test_hypervisor_capabilities_follow_what_the_hosts_reported(
    make_cluster: MakeCluster, agent_factory: StartAgent
) -> None:
    """The simulator's driver reports 24 data volumes, live storage motion (its block jobs) and VM
    snapshots: the listed capabilities are those, within what the administrator allows."""
    cluster = make_cluster("Simulator")
    cluster.add_host(agent_factory())
    api = cluster.api
    [row] = api.listHypervisorCapabilities(hypervisor="Simulator")["hypervisorCapabilities"]
    assert (row["storagemotionenabled"], row["vmsnapshotenabled"]) == (True, True)
    assert row["maxdatavolumeslimit"] == 24
    assert api.listCapabilities()["capability"]["storagemotionenabled"] is True  # some hosts can move disks
    try:
        api.updateHypervisorCapabilities(id=row["id"], maxdatavolumeslimit=40, vmsnapshotenabled=False)
        [more] = api.listHypervisorCapabilities(hypervisor="Simulator")["hypervisorCapabilities"]
        assert (more["maxdatavolumeslimit"], more["vmsnapshotenabled"]) == (24, False)
        api.updateHypervisorCapabilities(id=row["id"], maxdatavolumeslimit=3, storagemotionenabled=False)
        [fewer] = api.listHypervisorCapabilities(hypervisor="Simulator")["hypervisorCapabilities"]
        assert (fewer["maxdatavolumeslimit"], fewer["storagemotionenabled"]) == (3, False)
    finally:
        api.updateHypervisorCapabilities(
            id=row["id"], maxdatavolumeslimit=24, storagemotionenabled=True, vmsnapshotenabled=True
        )


def test_list_capabilities_claims_what_the_hosts_have(
    make_cluster: MakeCluster, qemu_agent_factory: StartAgent
) -> None:
    """listCapabilities (what clients such as the CloudStack UI read to show features) follows the KVM
    hosts' drivers: live storage motion (the QEMU driver's mirror) and VM snapshots with memory (its
    Snapshots role)."""
    cluster = make_cluster("KVM")
    cluster.add_host(qemu_agent_factory())
    caps = cluster.api.listCapabilities()["capability"]
    flags = (caps["storagemotionenabled"], caps["kvmsnapshotenabled"], caps["vmsnapshotmemoryenabled"])
    assert flags == (True, True, True)


def test_add_qemu_host_reports_real_resources_and_statvfs_capacity(
    make_cluster: MakeCluster, qemu_agent_factory: StartAgent, tmp_path: Path
) -> None:
    cluster = make_cluster("KVM")
    # A cluster pool created before the cluster has any host: nothing can mount it yet.
    before_dir = tmp_path / "shared-before"
    before = cluster.api.createStoragePool(
        name=f"before-{uuid.uuid4().hex[:6]}",
        zoneid=cluster.zoneid,
        clusterid=cluster.clusterid,
        scope="cluster",
        url=f"SharedMountPoint://localhost{before_dir}",
    )["storagepool"]
    assert before["scope"] == "CLUSTER"
    assert not before_dir.exists()

    agent = qemu_agent_factory()
    host = cluster.add_host(agent)
    assert host["state"] == "Up"
    assert host["hypervisor"] == "KVM"
    assert host["hypervisorversion"] == qemu_version()
    assert host["cpunumber"] == os.cpu_count()
    assert host["cpuspeed"] > 0
    assert host["memorytotal"] == meminfo_total()

    # Its local pool: the agent's directory, with the capacity of the file system holding it.
    local_dir = agent.data_dir / "pools" / "local"
    [local] = cluster.pools(hostid=host["id"])
    assert local["path"] == str(local_dir) and local_dir.is_dir()
    total, used = statvfs_bytes(local_dir)
    assert local["disksizetotal"] == total
    assert abs(local["disksizeused"] - used) < 256 << 20  # the disk is shared with everything else

    # Joining the cluster mounted (created) the earlier pool and reported its capacity.
    assert before_dir.is_dir()
    [before] = cluster.pools(id=before["id"])
    assert before["disksizetotal"] == statvfs_bytes(before_dir)[0]

    # A pool created now is attached on the Up host at once.
    after_dir = tmp_path / "shared-after"
    after = cluster.api.createStoragePool(
        name=f"after-{uuid.uuid4().hex[:6]}",
        zoneid=cluster.zoneid,
        clusterid=cluster.clusterid,
        scope="cluster",
        url=f"SharedMountPoint://localhost{after_dir}",
    )["storagepool"]
    assert after_dir.is_dir()
    assert after["disksizetotal"] == statvfs_bytes(after_dir)[0]
    assert {p["id"] for p in cluster.pools(scope="cluster")} == {before["id"], after["id"]}


def test_add_host_errors_name_the_cause(
    make_cluster: MakeCluster, agent_factory: StartAgent, qemu_agent_factory: StartAgent
) -> None:
    sim = make_cluster("Simulator")
    kvm = make_cluster("KVM")
    agent = agent_factory(token="right-token")

    with pytest.raises(CloudStackApiException) as exc:
        sim.add_url(agent.base_url, "wrong-token")
    code, text = api_error(exc)
    assert code == 534
    assert agent.base_url in text and "refused" in text and "token" in text

    # The agent runs the simulator, the cluster holds KVM hosts.
    with pytest.raises(CloudStackApiException) as exc:
        kvm.add_host(agent)
    code, text = api_error(exc)
    assert code == 431
    assert "runs Simulator, not KVM" in text

    # The hypervisor parameter must match the cluster's.
    with pytest.raises(CloudStackApiException) as exc:
        sim.add_host(agent, hypervisor="KVM")
    code, text = api_error(exc)
    assert code == 431 and "holds Simulator hosts, not KVM" in text

    with pytest.raises(CloudStackApiException) as exc:
        sim.add_host(agent, hypervisor="XenServer")
    code, text = api_error(exc)
    assert code == 431 and "XenServer" in text

    # Nobody listens there.
    with pytest.raises(CloudStackApiException) as exc:
        sim.add_url(f"http://127.0.0.1:{free_port()}", "t")
    code, text = api_error(exc)
    assert code == 534 and "not reachable" in text

    with pytest.raises(CloudStackApiException) as exc:
        sim.add_url("ftp://127.0.0.1:21", "t")
    code, text = api_error(exc)
    assert code == 431 and "url" in text

    # None of the failures left a host behind; the right call works once, the duplicate is refused.
    assert sim.api.listHosts(clusterid=sim.clusterid).get("host", []) == []
    host = sim.add_host(agent)
    with pytest.raises(CloudStackApiException) as exc:
        sim.add_url(agent.base_url + "/", agent.token)
    code, text = api_error(exc)
    assert code == 431 and "already been added" in text
    assert [h["id"] for h in sim.api.listHosts(clusterid=sim.clusterid)["host"]] == [host["id"]]


# --- listHosts, updateHost -------------------------------------------------------------------------


def test_list_hosts_filters(make_cluster: MakeCluster, agent_factory: StartAgent) -> None:
    c1, c2 = make_cluster("Simulator"), make_cluster("Simulator")
    h1 = c1.add_host(agent_factory())
    h2 = c1.add_host(agent_factory())
    h3 = c2.add_host(agent_factory())
    api = c1.api

    def ids(**kwargs: Any) -> set[str]:
        return {h["id"] for h in api.listHosts(**kwargs).get("host", [])}

    assert ids(clusterid=c1.clusterid) == {h1["id"], h2["id"]}
    assert ids(zoneid=c2.zoneid) == {h3["id"]}
    assert ids(podid=c1.podid) == {h1["id"], h2["id"]}
    assert ids(id=h2["id"]) == {h2["id"]}
    assert ids(name=h3["name"]) == {h3["id"]}
    assert ids(zoneid=c1.zoneid, type="Routing") == {h1["id"], h2["id"]}
    assert ids(zoneid=c1.zoneid, type="SecondaryStorage") == set()
    assert ids(zoneid=c1.zoneid, hypervisor="Simulator") == {h1["id"], h2["id"]}
    assert ids(zoneid=c1.zoneid, hypervisor="KVM") == set()
    assert ids(zoneid=c1.zoneid, state="Up") == {h1["id"], h2["id"]}
    assert ids(zoneid=c1.zoneid, state="Alert") == set()
    # The names are distinct although every agent calls itself after its data dir or the machine.
    assert len({h1["name"], h2["name"], h3["name"]}) == 3

    api.updateHost(id=h1["id"], allocationstate="Disable")
    assert ids(clusterid=c1.clusterid, resourcestate="Disabled") == {h1["id"]}
    assert ids(clusterid=c1.clusterid, resourcestate="Enabled") == {h2["id"]}


def test_update_host_allocation_state_tags_and_name(make_cluster: MakeCluster, agent_factory: StartAgent) -> None:
    cluster = make_cluster("Simulator")
    host = cluster.add_host(agent_factory())
    api = cluster.api
    assert api.updateHost(id=host["id"], allocationstate="Disable")["host"]["resourcestate"] == "Disabled"
    assert cluster.host(host["id"])["resourcestate"] == "Disabled"
    assert cluster.host(host["id"])["state"] == "Up"
    assert api.updateHost(id=host["id"], allocationstate="Enable")["host"]["resourcestate"] == "Enabled"
    updated = api.updateHost(id=host["id"], hosttags=" a , b ,", name=f"renamed-{host['id'][:6]}")["host"]
    assert updated["hosttags"] == "a,b"
    assert updated["name"] == f"renamed-{host['id'][:6]}"
    with pytest.raises(CloudStackApiException) as exc:
        api.updateHost(id=host["id"], allocationstate="Maintenance")
    assert api_error(exc)[0] == 431


# --- maintenance -----------------------------------------------------------------------------------


def test_maintenance_and_cancel(make_cluster: MakeCluster, agent_factory: StartAgent) -> None:
    cluster = make_cluster("Simulator")
    host = cluster.add_host(agent_factory())
    api = cluster.api
    result = api.prepareHostForMaintenance(id=host["id"], fetch_result=True)
    assert result["host"]["id"] == host["id"]
    assert result["host"]["resourcestate"] == "Maintenance"
    assert cluster.host(host["id"])["resourcestate"] == "Maintenance"

    # Twice is refused; allocation changes are refused while in maintenance.
    with pytest.raises(CloudStackApiException) as exc:
        api.prepareHostForMaintenance(id=host["id"])
    code, text = api_error(exc)
    assert code == 431 and "already in Maintenance" in text
    with pytest.raises(CloudStackApiException) as exc:
        api.updateHost(id=host["id"], allocationstate="Enable")
    assert "cancel maintenance first" in api_error(exc)[1]

    result = api.cancelHostMaintenance(id=host["id"], fetch_result=True)
    assert result["host"]["resourcestate"] == "Enabled"
    assert cluster.host(host["id"])["resourcestate"] == "Enabled"
    with pytest.raises(CloudStackApiException) as exc:
        api.cancelHostMaintenance(id=host["id"])
    assert "not in maintenance" in api_error(exc)[1]


def test_maintenance_refused_while_a_vm_runs(make_cluster: MakeCluster, agent_factory: StartAgent) -> None:
    cluster = make_cluster("Simulator")
    agent = agent_factory()
    host = cluster.add_host(agent)
    client = agent.client()
    spec = VmSpec(name="busy-vm", uuid=str(uuid.uuid4()), cpus=1, memory_mib=256)
    assert client.call(StartVm(spec=spec)).power_state == "running"
    api = cluster.api

    with pytest.raises(CloudStackApiException) as exc:
        api.prepareHostForMaintenance(id=host["id"], fetch_result=True)
    code, text = api_error(exc)
    assert "busy-vm" in text and "still runs VMs" in text, text
    assert code == 431
    after = cluster.host(host["id"])
    assert after["resourcestate"] == "ErrorInMaintenance"
    assert after["state"] == "Up"
    # The failed job is on record.
    jobs = api.listAsyncJobs().get("asyncjobs", [])
    [job] = [j for j in jobs if j.get("jobinstanceid") == host["id"] and j["cmd"] == "prepareHostForMaintenance"]
    assert job["jobstatus"] == 2

    # Once the VM is stopped, maintenance goes through from ErrorInMaintenance.
    client.call(StopVm(name="busy-vm", force=True))
    assert api.prepareHostForMaintenance(id=host["id"], fetch_result=True)["host"]["resourcestate"] == ("Maintenance")
    assert api.cancelHostMaintenance(id=host["id"], fetch_result=True)["host"]["resourcestate"] == "Enabled"


# --- deleteHost ------------------------------------------------------------------------------------


def test_delete_host_only_in_maintenance(make_cluster: MakeCluster, agent_factory: StartAgent) -> None:
    cluster = make_cluster("Simulator")
    agent = agent_factory()
    host = cluster.add_host(agent)
    api = cluster.api
    [local] = cluster.pools(hostid=host["id"])

    with pytest.raises(CloudStackApiException) as exc:
        api.deleteHost(id=host["id"])
    code, text = api_error(exc)
    assert code == 431 and "maintenance" in text and host["name"] in text
    assert cluster.host(host["id"])["state"] == "Up"

    api.prepareHostForMaintenance(id=host["id"], fetch_result=True)
    assert api.deleteHost(id=host["id"])["success"] in (True, "true")
    assert api.listHosts(clusterid=cluster.clusterid).get("host", []) == []
    assert local["id"] not in {p["id"] for p in cluster.pools()}
    assert api.listHosts(id=host["id"]).get("host", []) == []
    # The agent can be added again (as a new host) once the old one is gone.
    again = cluster.add_host(agent)
    assert again["id"] != host["id"] and again["state"] == "Up"
    assert len(cluster.pools(hostid=again["id"])) == 1


def test_delete_host_forced_and_disabled(make_cluster: MakeCluster, agent_factory: StartAgent) -> None:
    cluster = make_cluster("Simulator")
    h1, h2 = cluster.add_host(agent_factory()), cluster.add_host(agent_factory())
    api = cluster.api
    api.updateHost(id=h1["id"], allocationstate="Disable")
    api.deleteHost(id=h1["id"])
    api.deleteHost(id=h2["id"], forced=True)
    assert api.listHosts(clusterid=cluster.clusterid).get("host", []) == []
    assert cluster.pools(scope="host") == []


# --- listCapacity ----------------------------------------------------------------------------------


def test_list_capacity_sums_hosts_and_pools(
    make_cluster: MakeCluster, agent_factory: StartAgent, tmp_path: Path
) -> None:
    cluster = make_cluster("Simulator")
    hosts = [cluster.add_host(agent_factory()) for _ in range(2)]
    api: CloudStack = cluster.api
    api.createStoragePool(
        name=f"shared-{uuid.uuid4().hex[:6]}",
        zoneid=cluster.zoneid,
        clusterid=cluster.clusterid,
        scope="cluster",
        url=f"SharedMountPoint://localhost{tmp_path / 'shared'}",
    )
    pools = cluster.pools()
    assert len(pools) == 3

    caps = {c["type"]: c for c in api.listCapacity(zoneid=cluster.zoneid)["capacity"]}
    assert caps[0]["name"] == "MEMORY"
    assert caps[0]["capacitytotal"] == sum(h["memorytotal"] for h in hosts) == 2 * 64 * GIB
    assert caps[1]["name"] == "CPU"
    assert caps[1]["capacitytotal"] == sum(h["cpunumber"] * h["cpuspeed"] for h in hosts)
    assert caps[2]["name"] == "STORAGE"
    assert caps[2]["capacitytotal"] == sum(p["disksizetotal"] for p in pools) == 3 << 40
    assert caps[2]["capacityused"] == sum(p["disksizeused"] for p in pools)
    assert caps[3]["name"] == "STORAGE_ALLOCATED"
    assert all(c["zoneid"] == cluster.zoneid for c in caps.values())
    assert [c["type"] for c in api.listCapacity(zoneid=cluster.zoneid, type=0)["capacity"]] == [0]
    # Per cluster: the same numbers (everything of the zone is in that cluster).
    by_cluster = {c["type"]: c["capacitytotal"] for c in api.listCapacity(clusterid=cluster.clusterid)["capacity"]}
    assert by_cluster == {t: c["capacitytotal"] for t, c in caps.items()}

    # A deleted host leaves the sums.
    api.deleteHost(id=hosts[0]["id"], forced=True)
    caps = {c["type"]: c for c in api.listCapacity(zoneid=cluster.zoneid)["capacity"]}
    assert caps[0]["capacitytotal"] == 64 * GIB
    assert caps[2]["capacitytotal"] == 2 << 40
