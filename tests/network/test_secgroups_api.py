"""Security groups through the API on simulator hosts (fast): a zone with security groups and its
shared network, the default group of each account, groups and rules with their bad input refused
(431 naming the parameter, nothing made), the groups of VMs at deploy, and what is refused outside
such a zone. The data path (nftables on real hosts, real guests) is test_secgroups_qemu.py."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException
from simcloud import simulated_cloud

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ServerProcess, create_user_keys, start_server, wait_job
from strato.protocol.messages import ConfigureSimulator, FirewallSpec, GetState, firewall_digest

SG_OFFERING = "DefaultSharedNetworkOfferingWithSGService"
ISOLATED = "DefaultIsolatedNetworkOfferingWithSourceNatService"
EMPTY = firewall_digest(FirewallSpec())
TOKEN = "sgf"


@dataclass
class Cloud:
    server: ServerProcess
    api: CloudStack
    plain: dict[str, str]
    sg: dict[str, str]
    offers: dict[str, str]
    fleet: AgentProcess

    def firewall(self, n: int) -> str | None:
        """The digest of the filter simulated SG host n (1, 2) has applied."""
        return self.fleet.client(token=f"{TOKEN}-host-{n}", path=f"/host-{n}", timeout=30).call(GetState()).firewall


def _sg_zone(api: CloudStack, fleet: AgentProcess, store: Path) -> dict[str, str]:
    """A zone with security groups: two simulator hosts of one fleet process (so they see each other's
    pools) in one cluster sharing a pool (VMs move live)."""
    zone = api.createZone(name="sgz", networktype="Advanced", securitygroupenabled=True)["zone"]
    pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor="Simulator")["cluster"][0]
    ids = {}
    for n in (1, 2):
        ids[f"host-{n}"] = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"],
                                       url=f"{fleet.base_url}/host-{n}", username="x", password=f"{TOKEN}-host-{n}",
                                       hypervisor="Simulator")["host"][0]["id"]  # fmt: skip
    store.mkdir()
    shared = store.parent / "shared"
    shared.mkdir()
    api.createStoragePool(name="shared", zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"],
                          scope="cluster", url=f"SharedMountPoint://localhost{shared}")  # fmt: skip
    api.addImageStore(url=f"file://localhost{store}", provider="NFS", zoneid=zone["id"])
    tmpl = api.registerTemplate(name="t", displaytext="t", url="http://images.invalid/t.qcow2", format="QCOW2",
                                hypervisor="Simulator", zoneid=zone["id"], ispublic=True)["template"][0]  # fmt: skip
    assert wait_job(api, tmpl["jobid"])["jobstatus"] == 1
    offering = api.createServiceOffering(name="sgs", displaytext="s", cpunumber=1, cpuspeed=1000,
                                         memory=128)["serviceoffering"]  # fmt: skip
    api.createPhysicalNetwork(zoneid=zone["id"], name="guest", vlan="200-209")
    return {"zone": zone["id"], "template": tmpl["id"], "offering": offering["id"], **ids}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    base = tmp_path_factory.mktemp("sgapi")
    server = start_server(base / "server")
    agents = [start_agent(base / "a1", driver="simulator")]
    code = ("import sys; from pathlib import Path; from strato.agent.multi import run_simulator_fleet; "
            f"run_simulator_fleet(Path(sys.argv[1]), 2, sys.argv[2], {TOKEN!r})")  # fmt: skip
    agents.append(start_agent(base / "fleet", token=f"{TOKEN}-host-1", argv=[sys.executable, "-c", code,
                                                                             str(base / "fleet"), "{listen}"],
                              health_path="/host-1", health_token=f"{TOKEN}-host-1"))  # fmt: skip
    try:
        plain = simulated_cloud(server.cs(), agents[0], base / "store1")
        api = server.cs(fetch_result=True)
        server.cs().updateConfiguration(name="ping.interval", value="1")
        sg = _sg_zone(server.cs(), agents[1], base / "store2")
        offers = {o["name"]: o["id"] for o in api.listNetworkOfferings()["networkoffering"]}
        yield Cloud(server, api, plain, sg, offers, agents[1])
    finally:
        for agent in agents:
            agent.stop()
        server.stop()


def _refused(call: Any, param: str, code: int = 431, **kwargs: Any) -> str:
    with pytest.raises(CloudStackApiException) as err:
        call(**kwargs)
    assert err.value.error["errorcode"] == code, err.value.error
    text = str(err.value.error["errortext"])
    assert param in text, text
    return text


def _shared(cloud: Cloud, name: str, prefix: str, vlan: str) -> dict[str, Any]:
    return dict(cloud.api.createNetwork(name=name, displaytext=name, zoneid=cloud.sg["zone"],
                                        networkofferingid=cloud.offers[SG_OFFERING], gateway=f"{prefix}.1",
                                        netmask="255.255.255.0", startip=f"{prefix}.10", endip=f"{prefix}.99",
                                        vlan=vlan)["network"])  # fmt: skip


def _deploy(client: CloudStack, cloud: Cloud, name: str, network: str, **extra: Any) -> dict[str, Any]:
    vm = client.deployVirtualMachine(
        zoneid=cloud.sg["zone"],
        serviceofferingid=cloud.sg["offering"],
        templateid=cloud.sg["template"],
        name=name,
        networkids=network,
        **extra,
    )
    return dict(vm["virtualmachine"])  # fmt: skip


def test_zone_offering_and_shared_network(cloud: Cloud) -> None:
    api = cloud.api
    zone = api.listZones(id=cloud.sg["zone"])["zone"][0]
    assert zone["securitygroupsenabled"] is True and zone["networktype"] == "Advanced"
    assert api.listZones(id=cloud.plain["zone"])["zone"][0]["securitygroupsenabled"] is False
    assert api.listCapabilities()["capability"]["securitygroupsenabled"] is True
    offer = api.listNetworkOfferings(name=SG_OFFERING)["networkoffering"][0]
    assert [s["name"] for s in offer["service"]] == ["Dhcp", "Dns", "SecurityGroup"]
    assert offer["guestiptype"] == "Shared" and offer["specifyvlan"] and offer["specifyipranges"]

    base = {"zoneid": cloud.sg["zone"], "name": "bad", "displaytext": "bad", "gateway": "10.60.0.1",
            "netmask": "255.255.255.0", "startip": "10.60.0.10"}  # fmt: skip
    _refused(api.createNetwork, "vlan", networkofferingid=cloud.offers[SG_OFFERING], **base)
    _refused(api.createNetwork, "networkofferingid", networkofferingid=cloud.offers[ISOLATED], vlan="201", **base)
    _refused(api.createNetwork, "networkofferingid", networkofferingid=cloud.offers[SG_OFFERING], vlan="201",
             **{**base, "zoneid": cloud.plain["zone"]})  # fmt: skip
    keys = create_user_keys(api, cloud.server.endpoint, username="sgnet")
    user = cloud.server.cs(keys, fetch_result=True)
    _refused(user.createNetwork, "shared", code=531, networkofferingid=cloud.offers[SG_OFFERING], vlan="201", **base)
    assert api.listNetworks(listall=True, name="bad") == {}

    net = _shared(cloud, "shared-a", "10.60.0", "201")
    assert (net["type"], net["acltype"], net["vlan"]) == ("Shared", "Domain", "201")
    assert [s["name"] for s in net["service"]] == ["Dhcp", "Dns", "SecurityGroup"]
    assert net["id"] in [n["id"] for n in user.listNetworks()["network"]]  # every account may use it
    # VMs of two accounts on it, each in its own account's default group.
    mine = _deploy(user, cloud, "u1", net["id"])
    admins = _deploy(api, cloud, "adm1", net["id"])
    for vm, account in ((mine, "sgnet"), (admins, "admin")):
        assert [(g["name"], g["account"]) for g in vm["securitygroup"]] == [("default", account)]
        assert vm["nic"][0]["networkid"] == net["id"]
    # The SG host was sent its filter before the VMs started: the digest it reports is not the empty one.
    applied = [cloud.firewall(1), cloud.firewall(2)]
    assert any(d not in (None, "", EMPTY) for d in applied), applied
    for vm in (mine, admins):
        api.destroyVirtualMachine(id=vm["id"], expunge=True)
    api.deleteNetwork(id=net["id"])


def test_default_group_groups_and_rules(cloud: Cloud) -> None:
    keys = create_user_keys(cloud.api, cloud.server.endpoint, username="sguser")
    user = cloud.server.cs(keys, fetch_result=True)
    groups = user.listSecurityGroups()["securitygroup"]
    assert [g["name"] for g in groups] == ["default"]  # made for an account that existed before
    default = groups[0]
    assert [(r["protocol"], r["securitygroupname"], r["account"]) for r in default["ingressrule"]] == [
        ("all", "default", "sguser")
    ]
    assert "egressrule" not in default or default["egressrule"] == []
    assert [g["id"] for g in user.listSecurityGroups()["securitygroup"]] == [default["id"]]  # made once

    web = user.createSecurityGroup(name="web", description="web servers")["securitygroup"]
    assert (web["name"], web["description"], web["account"]) == ("web", "web servers", "sguser")
    _refused(user.createSecurityGroup, "name", name="web")

    rule = {"securitygroupid": web["id"], "protocol": "tcp", "startport": 80, "endport": 80}
    _refused(user.authorizeSecurityGroupIngress, "protocol", **{**rule, "protocol": "gre"}, cidrlist="0.0.0.0/0")
    _refused(user.authorizeSecurityGroupIngress, "endport", **{**rule, "endport": 70000}, cidrlist="0.0.0.0/0")
    _refused(user.authorizeSecurityGroupIngress, "startport", **{**rule, "startport": 90}, cidrlist="0.0.0.0/0")
    _refused(user.authorizeSecurityGroupIngress, "cidrlist", **rule, cidrlist="10.0.0.300/8")
    _refused(user.authorizeSecurityGroupIngress, "cidrlist", **rule, cidrlist="10.1.2.3")
    _refused(user.authorizeSecurityGroupIngress, "usersecuritygrouplist", **rule,
             usersecuritygrouplist=[{"account": "sguser", "group": "nosuch"}])  # fmt: skip
    _refused(user.authorizeSecurityGroupIngress, "icmptype", protocol="icmp", icmptype=300,
             securitygroupid=web["id"], cidrlist="0.0.0.0/0")  # fmt: skip
    _refused(user.authorizeSecurityGroupIngress, "startport", protocol="icmp", startport=1,
             securitygroupid=web["id"], cidrlist="0.0.0.0/0")  # fmt: skip
    _refused(user.authorizeSecurityGroupIngress, "securitygroupname", protocol="all", securitygroupname="nosuch",
             cidrlist="0.0.0.0/0")  # fmt: skip
    _refused(user.authorizeSecurityGroupIngress, "cidrlist", **rule)
    assert user.listSecurityGroups(id=web["id"])["securitygroup"][0]["ingressrule"] == []  # nothing made

    made = user.authorizeSecurityGroupIngress(**rule, cidrlist="10.0.0.0/8,192.168.1.0/24")["securitygroup"]
    assert sorted(r["cidr"] for r in made["ingressrule"]) == ["10.0.0.0/8", "192.168.1.0/24"]
    assert all((r["protocol"], r["startport"], r["endport"]) == ("tcp", 80, 80) for r in made["ingressrule"])
    _refused(user.authorizeSecurityGroupIngress, "already", **rule, cidrlist="10.0.0.0/8")
    from_default = user.authorizeSecurityGroupIngress(securitygroupname="web", protocol="icmp", icmptype=8,
                                                      icmpcode=-1, usersecuritygrouplist=[
                                                          {"account": "sguser", "group": "default"}])  # fmt: skip
    assert [(r["securitygroupname"], r["icmptype"]) for r in from_default["securitygroup"]["ingressrule"]] == [
        ("default", 8)
    ]
    out = user.authorizeSecurityGroupEgress(securitygroupid=web["id"], protocol="udp", startport=53, endport=53,
                                            cidrlist="0.0.0.0/0")["securitygroup"]  # fmt: skip
    listed = user.listSecurityGroups(securitygroupname="web")["securitygroup"][0]
    assert len(listed["ingressrule"]) == 3 and [r["ruleid"] for r in listed["egressrule"]] == [
        out["egressrule"][0]["ruleid"]
    ]
    _refused(user.revokeSecurityGroupIngress, "ingress rule", id=out["egressrule"][0]["ruleid"])
    other = cloud.server.cs(create_user_keys(cloud.api, cloud.server.endpoint, username="sgother"), fetch_result=True)
    _refused(other.revokeSecurityGroupIngress, "ingress rule", id=made["ingressrule"][0]["ruleid"])
    _refused(other.authorizeSecurityGroupIngress, "securitygroupid", **rule, cidrlist="10.9.0.0/16")
    assert [g["name"] for g in other.listSecurityGroups()["securitygroup"]] == ["default"]  # only its own
    user.revokeSecurityGroupEgress(id=out["egressrule"][0]["ruleid"])
    user.revokeSecurityGroupIngress(id=made["ingressrule"][0]["ruleid"])
    listed = user.listSecurityGroups(id=web["id"])["securitygroup"][0]
    assert len(listed["ingressrule"]) == 2 and not listed.get("egressrule")

    cross = user.authorizeSecurityGroupIngress(
        securitygroupid=web["id"],
        protocol="udp",
        startport=53,
        endport=53,
        usersecuritygrouplist=[{"account": "admin", "group": "default"}],
    )
    assert [(r["securitygroupname"], r["account"]) for r in cross["securitygroup"]["ingressrule"]] == [
        ("default", "admin")
    ]  # another account of the domain may be named, as in CloudStack  # fmt: skip
    _refused(user.deleteSecurityGroup, "default", name="default")
    net = _shared(cloud, "shared-b", "10.61.0", "202")
    vm = _deploy(user, cloud, "w1", net["id"], securitygroupnames="web")
    assert [g["name"] for g in vm["securitygroup"]] == ["web"]
    assert [g["name"] for g in user.listSecurityGroups(virtualmachineid=vm["id"])["securitygroup"]] == ["web"]
    _refused(user.deleteSecurityGroup, "in use", code=536, id=web["id"])
    _refused(user.updateVirtualMachine, "Running", id=vm["id"], securitygroupnames="default")
    user.stopVirtualMachine(id=vm["id"])
    changed = user.updateVirtualMachine(id=vm["id"], securitygroupnames="default,web")["virtualmachine"]
    assert sorted(g["name"] for g in changed["securitygroup"]) == ["default", "web"]
    changed = user.updateVirtualMachine(id=vm["id"], securitygroupnames="default")["virtualmachine"]
    assert [g["name"] for g in changed["securitygroup"]] == ["default"]
    user.deleteSecurityGroup(id=web["id"])  # no longer in use
    web = user.createSecurityGroup(name="web")["securitygroup"]
    _refused(user.deployVirtualMachine, "securitygroupids", zoneid=cloud.sg["zone"],
             serviceofferingid=cloud.sg["offering"], templateid=cloud.sg["template"], networkids=net["id"],
             securitygroupids="6f0b5c1e-3d2a-4b8e-9c7f-1a2b3c4d5e6f", name="bad")  # fmt: skip
    assert user.listVirtualMachines(name="bad") == {}
    user.destroyVirtualMachine(id=vm["id"], expunge=True)
    user.deleteSecurityGroup(id=web["id"])
    assert [g["name"] for g in user.listSecurityGroups()["securitygroup"]] == ["default"]
    cloud.api.deleteNetwork(id=net["id"])


def test_security_groups_outside_a_security_group_zone_are_refused(cloud: Cloud) -> None:
    api = cloud.api
    default = api.listSecurityGroups(securitygroupname="default")["securitygroup"][0]
    text = _refused(api.deployVirtualMachine, "security group", zoneid=cloud.plain["zone"],
                    serviceofferingid=cloud.plain["offering"], templateid=cloud.plain["template"],
                    securitygroupids=default["id"], name="nosg")  # fmt: skip
    assert "not enabled in this zone" in text
    vm = api.deployVirtualMachine(zoneid=cloud.plain["zone"], serviceofferingid=cloud.plain["offering"],
                                  templateid=cloud.plain["template"], name="nosg")["virtualmachine"]  # fmt: skip
    assert vm["securitygroup"] == []
    api.destroyVirtualMachine(id=vm["id"], expunge=True)


def _until(what: str, check: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def test_the_filter_follows_the_vm(cloud: Cloud) -> None:
    """A host has a VM's filter while the VM runs there: before it starts, after a rule change, not
    after it moved away or stopped (the monitor's reconcile), nor after it is expunged."""
    api = cloud.api
    net = _shared(cloud, "shared-c", "10.62.0", "203")
    vm = _deploy(api, cloud, "mover", net["id"], hostid=cloud.sg["host-1"])
    on_1 = cloud.firewall(1)
    assert on_1 != EMPTY and cloud.firewall(2) == EMPTY
    default = api.listSecurityGroups(securitygroupname="default")["securitygroup"][0]
    made = api.authorizeSecurityGroupIngress(securitygroupid=default["id"], protocol="tcp", startport=22, endport=22,
                                             cidrlist="192.0.2.0/24")["securitygroup"]  # fmt: skip
    assert cloud.firewall(1) not in (on_1, EMPTY)  # pushed before the answer
    # A slow migration: the target has the filter before the switch-over and keeps it through the
    # monitor's rounds while the VM is Migrating (its host in the database is still host-1).
    host_1 = cloud.fleet.client(token=f"{TOKEN}-host-1", path="/host-1", timeout=30)
    host_1.call(ConfigureSimulator(command="migrate_vm", delay_s=4.0))
    started = cloud.server.cs().migrateVirtualMachine(virtualmachineid=vm["id"], hostid=cloud.sg["host-2"])
    _until("the target has the filter", lambda: cloud.firewall(2) != EMPTY)
    seen = set()
    while api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Migrating":
        seen.add(cloud.firewall(2))
        time.sleep(0.3)
    assert EMPTY not in seen, "the target host lost the VM's filter while it migrated"
    assert wait_job(cloud.server.cs(), started["jobid"])["jobstatus"] == 1
    host_1.call(ConfigureSimulator(command="migrate_vm", delay_s=0.0))
    assert cloud.firewall(2) != EMPTY
    _until("host-1 drops the filter of the VM that left", lambda: cloud.firewall(1) == EMPTY)
    api.stopVirtualMachine(id=vm["id"])
    _until("host-2 drops the filter of the stopped VM", lambda: cloud.firewall(2) == EMPTY)
    api.startVirtualMachine(id=vm["id"], hostid=cloud.sg["host-1"])
    assert cloud.firewall(1) != EMPTY
    api.revokeSecurityGroupIngress(id=made["ingressrule"][0]["ruleid"])
    api.destroyVirtualMachine(id=vm["id"], expunge=True)
    _until("the expunged VM's filter goes", lambda: cloud.firewall(1) == EMPTY and cloud.firewall(2) == EMPTY)
    api.deleteNetwork(id=net["id"])
