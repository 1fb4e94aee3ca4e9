"""Network offerings an admin makes and egress firewall rules, through the API on a simulator host:
createNetworkOffering (only services Strato provides; Disabled until enabled), updateNetworkOffering,
deleteNetworkOffering, createNetwork on it; createEgressFirewallRule / listEgressFirewallRules /
deleteEgressFirewallRule and their bad input (431 naming the parameter, nothing made). What the rules do
to real traffic is in test_publicnat_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException
from simcloud import simulated_cloud

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ServerProcess, create_user_keys, start_server, wait_job

ISOLATED = "DefaultIsolatedNetworkOfferingWithSourceNatService"
SHARED = "DefaultSharedNetworkOfferingWithSGService"


@dataclass
class Cloud:
    server: ServerProcess
    api: CloudStack
    ids: dict[str, str]
    offers: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    base = tmp_path_factory.mktemp("netoffer")
    server: ServerProcess = start_server(base / "server")
    agent: AgentProcess = start_agent(base / "agent", driver="simulator")
    try:
        ids = simulated_cloud(server.cs(), agent, base / "store")
        api = server.cs(fetch_result=True)
        pn = api.createPhysicalNetwork(zoneid=ids["zone"], name="guest", isolationmethods="VXLAN", vlan="200-219")
        api.addTrafficType(physicalnetworkid=pn["physicalnetwork"]["id"], traffictype="Guest")
        api.updatePhysicalNetwork(id=pn["physicalnetwork"]["id"], state="Enabled")
        offers = {o["name"]: o for o in api.listNetworkOfferings()["networkoffering"]}
        yield Cloud(server, api, ids, offers)
    finally:
        agent.stop()
        server.stop()


def refused(call: Any, param: str, **kwargs: Any) -> str:
    with pytest.raises(CloudStackApiException) as err:
        call(**kwargs)
    assert err.value.error["errorcode"] == 431, err.value.error
    text = str(err.value.error["errortext"])
    assert param in text, text
    return text


def offering_names(api: CloudStack) -> set[str]:
    return {o["name"] for o in api.listNetworkOfferings()["networkoffering"]}


def test_defaults_show_their_egress_policy(cloud: Cloud) -> None:
    for name in (ISOLATED, SHARED):
        offer = cloud.offers[name]
        assert offer["isdefault"] is True and offer["state"] == "Enabled" and offer["egressdefaultpolicy"] is True


def test_an_admin_makes_enables_uses_and_deletes_an_offering(cloud: Cloud) -> None:
    api = cloud.api
    base = {"guestiptype": "Isolated", "traffictype": "GUEST", "displaytext": "x"}
    before = offering_names(api)
    for services, param in (
        ("Dhcp,Lb", "supportedservices"),  # not provided here
        ("Dhcp,SecurityGroup", "supportedservices"),  # not on an Isolated network
        ("Dhcp,PortForwarding", "SourceNat"),  # on the public side, which needs source NAT
        ("SourceNat", "Dhcp"),
    ):
        refused(api.createNetworkOffering, param, name="bad", supportedservices=services, **base)
    refused(api.createNetworkOffering, "traffictype", name="bad", supportedservices="Dhcp",
            **{**base, "traffictype": "PUBLIC"})  # fmt: skip
    refused(api.createNetworkOffering, "guestiptype", name="bad", supportedservices="Dhcp",
            **{**base, "guestiptype": "L2"})  # fmt: skip
    refused(api.createNetworkOffering, "name", name=ISOLATED, supportedservices="Dhcp", **base)
    refused(api.createNetworkOffering, "serviceproviderlist", name="bad", supportedservices="Dhcp",
            serviceproviderlist=[{"service": "Dhcp", "provider": "Netscaler"}], **base)  # fmt: skip
    assert offering_names(api) == before

    made = api.createNetworkOffering(name="locked-down", supportedservices="Dhcp,SourceNat,Firewall",
                                     egressdefaultpolicy=False,
                                     serviceproviderlist=[{"service": "Dhcp", "provider": "VirtualRouter"}],
                                     **base)["networkoffering"]  # fmt: skip
    assert made["state"] == "Disabled" and made["isdefault"] is False and made["egressdefaultpolicy"] is False
    assert [s["name"] for s in made["service"]] == ["Dhcp", "SourceNat", "Firewall"]
    assert api.listNetworkOfferings(id=made["id"])["networkoffering"][0]["name"] == "locked-down"
    assert made["id"] in {o["id"] for o in api.listNetworkOfferings(state="Disabled")["networkoffering"]}

    create = {"name": "n1", "displaytext": "n1", "zoneid": cloud.ids["zone"], "networkofferingid": made["id"]}
    refused(api.createNetwork, "networkofferingid", **create)  # Disabled
    enabled = api.updateNetworkOffering(id=made["id"], state="Enabled", displaytext="no way out")["networkoffering"]
    assert enabled["state"] == "Enabled" and enabled["displaytext"] == "no way out"
    net = api.createNetwork(**create)["network"]
    assert net["networkofferingid"] == made["id"] and net["networkofferingname"] == "locked-down"

    refused(api.updateNetworkOffering, "id", id=cloud.offers[ISOLATED]["id"], state="Disabled")  # fixed
    refused(api.updateNetworkOffering, "state", id=made["id"], state="Broken")
    refused(api.deleteNetworkOffering, "network", id=made["id"])  # in use
    refused(api.deleteNetworkOffering, "id", id=cloud.offers[SHARED]["id"])
    api.deleteNetwork(id=net["id"])
    api.deleteNetworkOffering(id=made["id"])
    assert "locked-down" not in offering_names(api)

    user = create_user_keys(cloud.api, cloud.server.endpoint, username="offer-user")
    with pytest.raises(CloudStackApiException) as err:
        cloud.server.cs(user).createNetworkOffering(name="mine", supportedservices="Dhcp", **base)
    assert err.value.error["errorcode"] in (401, 432), err.value.error


def test_egress_rules_through_the_api(cloud: Cloud) -> None:
    api = cloud.api
    zone, isolated = cloud.ids["zone"], cloud.offers[ISOLATED]["id"]
    net = api.createNetwork(name="eg", displaytext="eg", zoneid=zone, gateway="10.70.0.1", netmask="255.255.255.0",
                            networkofferingid=isolated)["network"]  # fmt: skip
    no_nat = cloud.offers["DefaultIsolatedNetworkOffering"]["id"]
    plain = api.createNetwork(name="eg-plain", displaytext="eg", zoneid=zone, networkofferingid=no_nat)["network"]
    make = api.createEgressFirewallRule
    refused(make, "networkid", networkid=plain["id"], protocol="tcp")  # no Firewall service
    refused(make, "protocol", networkid=net["id"], protocol="gre")
    refused(make, "startport", networkid=net["id"], protocol="icmp", startport=80)
    refused(make, "endport", networkid=net["id"], protocol="tcp", startport=90, endport=80)
    refused(make, "startport", networkid=net["id"], protocol="tcp", startport=70000)
    refused(make, "cidrlist", networkid=net["id"], protocol="tcp", cidrlist="10.99.0.0/24")  # not the network's
    refused(make, "destcidrlist", networkid=net["id"], protocol="tcp", destcidrlist="nowhere")
    refused(make, "icmptype", networkid=net["id"], protocol="tcp", icmptype=8)
    assert api.listEgressFirewallRules(networkid=net["id"]) == {}

    rule = make(networkid=net["id"], protocol="tcp", startport=25, cidrlist="10.70.0.0/25",
                destcidrlist="198.51.100.0/24")["firewallrule"]  # fmt: skip
    assert (rule["traffictype"], rule["startport"], rule["endport"], rule["state"]) == ("Egress", 25, 25, "Active")
    assert rule["cidrlist"] == "10.70.0.0/25" and rule["destcidrlist"] == "198.51.100.0/24"
    ping = make(networkid=net["id"], protocol="icmp", icmptype=8, icmpcode=-1)["firewallrule"]
    listed = api.listEgressFirewallRules(networkid=net["id"])["firewallrule"]
    assert {r["id"] for r in listed} == {rule["id"], ping["id"]}
    assert api.listFirewallRules(networkid=net["id"]) == {}  # ingress rules are listed apart

    other = create_user_keys(cloud.api, cloud.server.endpoint, username="egress-stranger")
    stranger = cloud.server.cs(other)
    with pytest.raises(CloudStackApiException) as err:
        stranger.deleteEgressFirewallRule(id=rule["id"])
    assert err.value.error["errorcode"] == 431  # as unknown: the id is not leaked
    assert stranger.listEgressFirewallRules(listall=True) == {}

    done = wait_job(cloud.server.cs(), cloud.server.cs().deleteEgressFirewallRule(id=rule["id"])["jobid"], 60)
    assert done["jobstatus"] == 1, done
    assert [r["id"] for r in api.listEgressFirewallRules(networkid=net["id"])["firewallrule"]] == [ping["id"]]
    api.deleteNetwork(id=net["id"])  # takes its rules with it
    api.deleteNetwork(id=plain["id"])
    assert api.listEgressFirewallRules(id=ping["id"]) == {}
