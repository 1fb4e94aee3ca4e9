"""Public IPs, source NAT, port forwarding and firewall rules through the API (`cs`) on a simulator host
(fast): the public range, the source NAT address taken when the network's first VM starts, more
addresses, rules and their refusals (431 naming the parameter, nothing made), and the router's wanted
state built from the server's database (what restartNetwork sends the router's host)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException
from simcloud import simulated_cloud
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ServerProcess, create_user_keys, start_server, wait_job
from strato.db.models import Network
from strato.protocol.messages import ConfigureSimulator, PublicSpec
from strato.services.network.publicips import public_spec

ISOLATED = "DefaultIsolatedNetworkOfferingWithSourceNatService"
NO_NAT = "DefaultIsolatedNetworkOffering"
RANGE = {"gateway": "198.18.0.1", "netmask": "255.255.255.0", "startip": "198.18.0.10", "endip": "198.18.0.12"}


@dataclass
class Cloud:
    server: ServerProcess
    agent: AgentProcess
    api: CloudStack
    ids: dict[str, str]
    physical: dict[str, Any]
    offerings: dict[str, str]

    def router_public(self, network_id: str) -> PublicSpec | None:
        engine = create_engine(f"sqlite:///{self.server.sqlite_path}")
        try:
            with Session(engine) as s:
                network = s.get(Network, network_id)
                assert network is not None
                return public_spec(s, network)
        finally:
            engine.dispose()

    def fail_next_ensure(self) -> None:
        """The simulator host fails the next EnsureNetwork (as a host whose nft refused the rules)."""
        self.agent.client().call(ConfigureSimulator(command="ensure_network", fail_count=1, fail_message="nft said no"))

    def failed_job(self, started: dict[str, Any]) -> str:
        job = wait_job(self.server.cs(), started["jobid"], 60)
        assert job["jobstatus"] == 2, job
        return str(job["jobresult"]["errortext"])

    def deploy(self, name: str, network_id: str, **owner: str) -> dict[str, Any]:
        vm = self.api.deployVirtualMachine(
            name=name, networkids=network_id, zoneid=self.ids["zone"], serviceofferingid=self.ids["offering"],
            templateid=self.ids["template"], **owner,
        )  # fmt: skip
        return dict(vm["virtualmachine"])


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    base = tmp_path_factory.mktemp("publicip")
    server: ServerProcess = start_server(base / "server")
    agent: AgentProcess = start_agent(base / "agent", driver="simulator")
    try:
        ids = simulated_cloud(server.cs(), agent, base / "store")
        api = server.cs(fetch_result=True)
        pn = api.createPhysicalNetwork(zoneid=ids["zone"], name="phys", isolationmethods="VXLAN", vlan="200-209")
        pn = pn["physicalnetwork"]
        api.addTrafficType(physicalnetworkid=pn["id"], traffictype="Guest")
        api.addTrafficType(physicalnetworkid=pn["id"], traffictype="Public", kvmnetworklabel="strpub0")
        api.updatePhysicalNetwork(id=pn["id"], state="Enabled")
        offers = {o["name"]: o["id"] for o in api.listNetworkOfferings()["networkoffering"]}
        yield Cloud(server, agent, api, ids, pn, offers)
    finally:
        agent.stop()
        server.stop()


def _refused(call: Any, param: str, code: int = 431, **kwargs: Any) -> str:
    with pytest.raises(CloudStackApiException) as err:
        call(**kwargs)
    assert err.value.error["errorcode"] == code, err.value.error
    text = str(err.value.error["errortext"])
    assert param in text, text
    return text


def test_ranges_addresses_and_rules(cloud: Cloud) -> None:
    api, zone = cloud.api, cloud.ids["zone"]
    # Bad ranges: 431 naming the parameter, nothing made.
    _refused(api.createVlanIpRange, "gateway", zoneid=zone, forvirtualnetwork=True, **{**RANGE, "gateway": "x"})
    _refused(
        api.createVlanIpRange, "netmask", zoneid=zone, forvirtualnetwork=True, **{**RANGE, "netmask": "255.0.255.0"}
    )
    _refused(api.createVlanIpRange, "endip", zoneid=zone, forvirtualnetwork=True, **{**RANGE, "endip": "198.19.0.5"})
    _refused(api.createVlanIpRange, "startip", zoneid=zone, forvirtualnetwork=True,
             **{**RANGE, "startip": "198.18.0.20"})  # fmt: skip
    _refused(api.createVlanIpRange, "vlan", zoneid=zone, forvirtualnetwork=True, vlan="55", **RANGE)
    _refused(api.createVlanIpRange, "forvirtualnetwork", zoneid=zone, forvirtualnetwork=False, **RANGE)
    _refused(
        api.createVlanIpRange, "gateway", zoneid=zone, forvirtualnetwork=True, **{**RANGE, "gateway": "198.18.0.11"}
    )
    assert api.listVlanIpRanges(zoneid=zone) == {}

    made = api.createVlanIpRange(zoneid=zone, forvirtualnetwork=True, vlan="untagged", **RANGE)["vlan"]
    shown = (made["startip"], made["endip"], made["gateway"], made["vlan"])
    assert shown == ("198.18.0.10", "198.18.0.12", "198.18.0.1", "vlan://untagged")
    assert made["physicalnetworkid"] == cloud.physical["id"] and made["forvirtualnetwork"] is True
    overlapping = {**RANGE, "startip": "198.18.0.12", "endip": "198.18.0.30"}
    _refused(api.createVlanIpRange, "overlaps", zoneid=zone, forvirtualnetwork=True, **overlapping)
    assert [r["id"] for r in api.listVlanIpRanges(zoneid=zone)["vlaniprange"]] == [made["id"]]

    clash = {"gateway": "198.18.0.129", "netmask": "255.255.255.128", "networkofferingid": cloud.offerings[ISOLATED]}
    _refused(api.createNetwork, "public range", name="clash", displaytext="clash", zoneid=zone, **clash)
    net = api.createNetwork(name="nat", displaytext="nat", zoneid=zone, networkofferingid=cloud.offerings[ISOLATED],
                            gateway="10.70.0.1", netmask="255.255.255.0")["network"]  # fmt: skip
    assert api.listPublicIpAddresses(associatednetworkid=net["id"]) == {}  # not implemented yet
    vm = cloud.deploy("natvm", net["id"])
    (snat,) = api.listPublicIpAddresses(associatednetworkid=net["id"])["publicipaddress"]
    shown = (snat["ipaddress"], snat["issourcenat"], snat["state"], snat["isstaticnat"])
    assert shown == ("198.18.0.10", True, "Allocated", False)
    assert snat["zoneid"] == zone and snat["account"] == "admin" and snat["vlanid"] == made["id"]
    spec = cloud.router_public(net["id"])
    assert spec is not None and (spec.source_nat, spec.bridge, spec.gateway, spec.prefix, spec.guest_cidr) == (
        "198.18.0.10",
        "strpub0",
        "198.18.0.1",
        24,
        "10.70.0.0/24",
    )
    _refused(api.deleteVlanIpRange, "in use", code=536, id=made["id"])
    _refused(api.disassociateIpAddress, "source NAT", id=snat["id"])

    extra = api.associateIpAddress(networkid=net["id"])["ipaddress"]
    assert (extra["ipaddress"], extra["issourcenat"], extra["associatednetworkid"]) == ("198.18.0.11", False, net["id"])
    _refused(api.associateIpAddress, "networkid")
    nonat = api.createNetwork(name="nonat", displaytext="nonat", zoneid=zone, networkofferingid=cloud.offerings[NO_NAT],
                              gateway="10.71.0.1", netmask="255.255.255.0")["network"]  # fmt: skip
    _refused(api.associateIpAddress, "SourceNat", networkid=nonat["id"])

    pf_args = {"ipaddressid": extra["id"], "protocol": "tcp", "publicport": 2222, "privateport": 22,
               "virtualmachineid": vm["id"]}  # fmt: skip
    _refused(api.createPortForwardingRule, "protocol", **{**pf_args, "protocol": "icmp"})
    _refused(api.createPortForwardingRule, "publicport", **{**pf_args, "publicport": 70000})
    _refused(api.createPortForwardingRule, "privateendport", **{**pf_args, "publicendport": 2223, "privateendport": 30})
    _refused(api.createPortForwardingRule, "ipaddressid", **{**pf_args, "ipaddressid": made["id"]})
    wide = {"publicport": 10000, "publicendport": 10999, "privateport": 20000, "privateendport": 20999}
    _refused(api.createPortForwardingRule, "at most 256", **{**pf_args, **wide})
    other = cloud.deploy("elsewhere", nonat["id"])
    _refused(api.createPortForwardingRule, "virtualmachineid", **{**pf_args, "virtualmachineid": other["id"]})
    assert api.listPortForwardingRules(listall=True) == {}

    pf = api.createPortForwardingRule(openfirewall=False, **pf_args)["portforwardingrule"]
    assert (pf["publicport"], pf["privateport"], pf["protocol"], pf["vmguestip"], pf["state"]) == (
        "2222",
        "22",
        "tcp",
        vm["nic"][0]["ipaddress"],
        "Active",
    )
    _refused(api.createPortForwardingRule, "overlaps", **{**pf_args, "publicport": 2222, "privateport": 23})
    assert api.listFirewallRules(ipaddressid=extra["id"]) == {}  # openfirewall=false: nothing comes in yet

    _refused(api.createFirewallRule, "startport", ipaddressid=extra["id"], protocol="tcp")
    _refused(api.createFirewallRule, "cidrlist", ipaddressid=extra["id"], protocol="tcp", startport=2222,
             cidrlist="300.1.2.0/24")  # fmt: skip
    _refused(api.createFirewallRule, "protocol", ipaddressid=extra["id"], protocol="gre")
    fw = api.createFirewallRule(ipaddressid=extra["id"], protocol="tcp", startport=2222, endport=2222,
                                cidrlist="203.0.113.0/24,198.51.100.7/32")["firewallrule"]  # fmt: skip
    assert (fw["startport"], fw["endport"], fw["cidrlist"], fw["state"]) == (
        2222,
        2222,
        "203.0.113.0/24,198.51.100.7/32",
        "Active",
    )
    spec = cloud.router_public(net["id"])
    assert spec is not None and sorted(spec.addresses) == ["198.18.0.10", "198.18.0.11"]
    assert [(f.public_ip, f.public_start, f.private_ip, f.private_start) for f in spec.forwards] == [
        ("198.18.0.11", 2222, vm["nic"][0]["ipaddress"], 22)
    ]
    assert [(a.public_ip, a.protocol, a.start_port, a.cidrs) for a in spec.allows] == [
        ("198.18.0.11", "tcp", 2222, ["203.0.113.0/24", "198.51.100.7/32"])
    ]

    opened = api.createPortForwardingRule(**{**pf_args, "publicport": 8080, "privateport": 80})["portforwardingrule"]
    auto = [r for r in api.listFirewallRules(ipaddressid=extra["id"])["firewallrule"] if r["id"] != fw["id"]]
    assert [(r["startport"], r["cidrlist"]) for r in auto] == [(8080, "0.0.0.0/0")]  # openfirewall by default
    _refused(api.deleteFirewallRule, "port forwarding rule", id=auto[0]["id"])
    assert api.restartNetwork(id=net["id"])["network"]["id"] == net["id"]
    api.deletePortForwardingRule(id=opened["id"])
    assert [r["id"] for r in api.listFirewallRules(ipaddressid=extra["id"])["firewallrule"]] == [fw["id"]]
    api.deleteFirewallRule(id=fw["id"])
    assert api.listFirewallRules(ipaddressid=extra["id"]) == {}

    # Static NAT: the whole address to the VM; refused where it cannot be, and not beside port forwards.
    _refused(api.enableStaticNat, "source NAT", ipaddressid=snat["id"], virtualmachineid=vm["id"])
    _refused(api.enableStaticNat, "port forwarding", ipaddressid=extra["id"], virtualmachineid=vm["id"])
    api.deletePortForwardingRule(id=pf["id"])
    _refused(api.enableStaticNat, "virtualmachineid", ipaddressid=extra["id"], virtualmachineid=other["id"])
    assert api.enableStaticNat(ipaddressid=extra["id"], virtualmachineid=vm["id"])["success"] is True
    (shown,) = api.listPublicIpAddresses(isstaticnat=True)["publicipaddress"]
    assert (shown["id"], shown["virtualmachineid"], shown["vmipaddress"]) == (extra["id"], vm["id"],
                                                                            vm["nic"][0]["ipaddress"])  # fmt: skip
    _refused(api.createPortForwardingRule, "static NAT", **pf_args)
    _refused(api.enableStaticNat, "already", ipaddressid=extra["id"], virtualmachineid=vm["id"])
    spec = cloud.router_public(net["id"])
    assert spec is not None and [(n.public_ip, n.private_ip) for n in spec.static_nats] == [
        ("198.18.0.11", vm["nic"][0]["ipaddress"])
    ]
    api.disableStaticNat(ipaddressid=extra["id"])
    assert api.listPublicIpAddresses(isstaticnat=True) == {}
    _refused(api.disableStaticNat, "no static NAT", ipaddressid=extra["id"])
    pf = api.createPortForwardingRule(openfirewall=False, **pf_args)["portforwardingrule"]

    # Releasing the address takes its rules with it; the range's addresses come back.
    api.disassociateIpAddress(id=extra["id"])
    assert api.listPortForwardingRules(listall=True) == {}
    assert [a["ipaddress"] for a in api.listPublicIpAddresses(zoneid=zone)["publicipaddress"]] == ["198.18.0.10"]
    spec = cloud.router_public(net["id"])
    assert spec is not None and spec.addresses == ["198.18.0.10"] and spec.forwards == [] and spec.allows == []

    api.createPortForwardingRule(**{**pf_args, "ipaddressid": snat["id"]})  # on the source NAT address
    for v in (vm, other):
        api.destroyVirtualMachine(id=v["id"], expunge=True)
    assert api.listPortForwardingRules(listall=True) == {}  # gone with the VM (its address is free again)
    assert api.listFirewallRules(listall=True) == {}
    api.deleteNetwork(id=net["id"])
    api.deleteNetwork(id=nonat["id"])
    assert api.listPublicIpAddresses(listall=True) == {}
    api.deleteVlanIpRange(id=made["id"])
    assert api.listVlanIpRanges(zoneid=zone) == {}

    # Usage (CloudStack's type 3): each address billed from its allocation to its release.
    today = datetime.now(UTC)
    span = {"startdate": (today - timedelta(days=1)).strftime("%Y-%m-%d"), "enddate": today.strftime("%Y-%m-%d")}
    assert api.generateUsageRecords(**span)["success"] in (True, "true")
    records = api.listUsageRecords(type=3, **span)["usagerecord"]
    billed = {r["usageid"] for r in records}
    assert {snat["id"], extra["id"]} <= billed, records
    assert all(r["usagetype"] == 3 and r["account"] == "admin" and r["usage"].endswith(" Hrs") for r in records)


def test_a_user_sees_only_its_addresses_and_the_range_is_admins(cloud: Cloud) -> None:
    api, zone = cloud.api, cloud.ids["zone"]
    made = api.createVlanIpRange(zoneid=zone, forvirtualnetwork=True, **{**RANGE, "startip": "198.18.0.50",
                                                                        "endip": "198.18.0.50"})["vlan"]  # fmt: skip
    keys = create_user_keys(api, cloud.server.endpoint, username="ipuser")
    user = cloud.server.cs(keys, fetch_result=True)
    _refused(user.createVlanIpRange, "", code=432, zoneid=zone, **RANGE)
    mine = user.createNetwork(name="mine", displaytext="mine", zoneid=zone,
                              networkofferingid=cloud.offerings[ISOLATED])["network"]  # fmt: skip
    vm = cloud.deploy("uservm", mine["id"], account="ipuser", domainid=mine["domainid"])
    try:
        (snat,) = user.listPublicIpAddresses()["publicipaddress"]
        assert snat["ipaddress"] == "198.18.0.50" and snat["account"] == "ipuser"
        _refused(user.associateIpAddress, "capacity", code=533, networkid=mine["id"])  # the range is used up
        assert api.listPublicIpAddresses(account="ipuser", domainid=snat["domainid"])["count"] == 1
        # Another network's first start needs a source NAT address the zone no longer has.
        full = api.createNetwork(name="full", displaytext="full", zoneid=zone,
                                 networkofferingid=cloud.offerings[ISOLATED])["network"]  # fmt: skip
        started = cloud.server.cs().deployVirtualMachine(name="nofree", networkids=full["id"], zoneid=zone,
                                                         serviceofferingid=cloud.ids["offering"],
                                                         templateid=cloud.ids["template"])  # fmt: skip
        assert "public IP address capacity" in cloud.failed_job(started)
        assert api.listPublicIpAddresses(associatednetworkid=full["id"]) == {}
        api.destroyVirtualMachine(id=started["id"], expunge=True)
        api.deleteNetwork(id=full["id"])
    finally:
        api.destroyVirtualMachine(id=vm["id"], expunge=True)
        user.deleteNetwork(id=mine["id"])
        api.deleteVlanIpRange(id=made["id"])


def test_public_ip_and_network_limits(cloud: Cloud) -> None:
    """CloudStack's resource types 1 (public_ip, source NAT addresses counted) and 6 (network, isolated
    ones): shown in listAccounts and listResourceLimits, refused with 532 past the account's limit."""
    api, zone = cloud.api, cloud.ids["zone"]
    made = api.createVlanIpRange(zoneid=zone, forvirtualnetwork=True, **{**RANGE, "startip": "198.18.0.60",
                                                                        "endip": "198.18.0.65"})["vlan"]  # fmt: skip
    keys = create_user_keys(api, cloud.server.endpoint, username="limituser")
    user = cloud.server.cs(keys, fetch_result=True)
    (acct,) = api.listAccounts(name="limituser")["account"]
    assert (acct["iplimit"], acct["iptotal"], acct["networklimit"], acct["networktotal"]) == ("20", 0, "20", 0)
    owner = {"account": "limituser", "domainid": acct["domainid"]}
    api.updateResourceLimit(resourcetype=1, max=2, **owner)
    api.updateResourceLimit(resourcetype=6, max=1, **owner)
    net = {"zoneid": zone, "networkofferingid": cloud.offerings[ISOLATED]}
    mine = user.createNetwork(name="lim", displaytext="lim", **net)["network"]
    _refused(user.createNetwork, "type network", code=532, name="lim2", displaytext="lim2", **net)
    vm = cloud.deploy("limitvm", mine["id"], **owner)
    try:
        extra = user.associateIpAddress(networkid=mine["id"])["ipaddress"]  # with the source NAT one: 2
        _refused(user.associateIpAddress, "type public_ip", code=532, networkid=mine["id"])
        assert user.listPublicIpAddresses()["count"] == 2
        (acct,) = api.listAccounts(name="limituser")["account"]
        assert (acct["iptotal"], acct["ipavailable"], acct["networktotal"], acct["networkavailable"]) == (
            2,
            "0",
            1,
            "0",
        )
        (shown,) = api.listResourceLimits(resourcetype=1, **owner)["resourcelimit"]
        assert (shown["max"], shown["resourcetypename"]) == (2, "public_ip")
        user.disassociateIpAddress(id=extra["id"])
        again = user.associateIpAddress(networkid=mine["id"])["ipaddress"]
        assert again["ipaddress"]
    finally:
        api.destroyVirtualMachine(id=vm["id"], expunge=True)
        user.deleteNetwork(id=mine["id"])
        api.deleteVlanIpRange(id=made["id"])


def test_a_host_failure_leaves_nothing_half_done(cloud: Cloud) -> None:
    api, zone = cloud.api, cloud.ids["zone"]
    made = api.createVlanIpRange(zoneid=zone, forvirtualnetwork=True, **{**RANGE, "startip": "198.18.0.60",
                                                                        "endip": "198.18.0.61"})["vlan"]  # fmt: skip
    net = api.createNetwork(name="failing", displaytext="failing", zoneid=zone,
                            networkofferingid=cloud.offerings[ISOLATED])["network"]  # fmt: skip
    vm = cloud.deploy("failvm", net["id"])
    raw = cloud.server.cs()  # answers job ids, for the failed jobs
    try:
        (snat,) = api.listPublicIpAddresses(associatednetworkid=net["id"])["publicipaddress"]
        cloud.fail_next_ensure()
        assert "nft said no" in cloud.failed_job(raw.associateIpAddress(networkid=net["id"]))
        assert [a["id"] for a in api.listPublicIpAddresses(associatednetworkid=net["id"])["publicipaddress"]] == [
            snat["id"]
        ]  # the new address released again
        cloud.fail_next_ensure()
        started = raw.createPortForwardingRule(ipaddressid=snat["id"], protocol="tcp", publicport=2222, privateport=22,
                                               virtualmachineid=vm["id"])  # fmt: skip
        assert "nft said no" in cloud.failed_job(started)
        assert api.listPortForwardingRules(listall=True) == {} and api.listFirewallRules(listall=True) == {}
        fw = api.createFirewallRule(ipaddressid=snat["id"], protocol="icmp")["firewallrule"]
        cloud.fail_next_ensure()
        assert "nft said no" in cloud.failed_job(raw.deleteFirewallRule(id=fw["id"]))
        assert [(r["id"], r["state"]) for r in api.listFirewallRules(listall=True)["firewallrule"]] == [
            (fw["id"], "Active")
        ]  # still on the router, still listed
        extra = api.associateIpAddress(networkid=net["id"])["ipaddress"]
        cloud.fail_next_ensure()
        _refused(api.enableStaticNat, "nft said no", code=534, ipaddressid=extra["id"], virtualmachineid=vm["id"])
        assert api.listPublicIpAddresses(isstaticnat=True) == {}
    finally:
        api.destroyVirtualMachine(id=vm["id"], expunge=True)
        api.deleteNetwork(id=net["id"])
        api.deleteVlanIpRange(id=made["id"])
