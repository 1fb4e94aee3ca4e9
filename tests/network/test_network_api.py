"""The network model through the API on a simulator host (fast): physical networks, the default
offerings, networks with their VNI and range, NICs chosen by the server at deploy and shown in every
VM response, and the bad input of issue 12 refused with 431 naming the parameter, nothing made."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException
from simcloud import simulated_cloud

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ServerProcess, create_user_keys, start_server
from strato.protocol.messages import ConfigureSimulator

ISOLATED = "DefaultIsolatedNetworkOfferingWithSourceNatService"


@dataclass
class Cloud:
    server: ServerProcess
    agent: AgentProcess
    api: CloudStack
    ids: dict[str, str]
    physical: dict[str, Any]
    offering: str


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    base = tmp_path_factory.mktemp("netapi")
    server: ServerProcess = start_server(base / "server")
    agent: AgentProcess = start_agent(base / "agent", driver="simulator")
    try:
        ids = simulated_cloud(server.cs(), agent, base / "store")
        api = server.cs(fetch_result=True)
        pn = api.createPhysicalNetwork(zoneid=ids["zone"], name="guest", isolationmethods="VXLAN", vlan="100-102")
        pn = pn["physicalnetwork"]
        api.addTrafficType(physicalnetworkid=pn["id"], traffictype="Guest")
        api.updatePhysicalNetwork(id=pn["id"], state="Enabled")
        offers = {o["name"]: o for o in api.listNetworkOfferings()["networkoffering"]}
        yield Cloud(server, agent, api, ids, pn, offers[ISOLATED]["id"])
    finally:
        agent.stop()
        server.stop()


def _refused(call: Any, param: str, **kwargs: Any) -> str:
    with pytest.raises(CloudStackApiException) as err:
        call(**kwargs)
    assert err.value.error["errorcode"] == 431, err.value.error
    text = str(err.value.error["errortext"])
    assert param in text, text
    return text


def test_physical_network_and_offerings(cloud: Cloud) -> None:
    api = cloud.api
    pns = api.listPhysicalNetworks(zoneid=cloud.ids["zone"])["physicalnetwork"]
    assert [(p["name"], p["isolationmethods"], p["vlan"], p["state"]) for p in pns] == [
        ("guest", "VXLAN", "100-102", "Enabled")
    ]
    providers = api.listNetworkServiceProviders(physicalnetworkid=cloud.physical["id"])["networkserviceprovider"]
    assert [(p["name"], p["state"]) for p in providers] == [("VirtualRouter", "Enabled")]
    offers = {o["name"]: o for o in api.listNetworkOfferings()["networkoffering"]}
    assert {ISOLATED, "DefaultSharedNetworkOfferingWithSGService"} <= set(offers)
    assert [s["name"] for s in offers[ISOLATED]["service"]] == [
        "Dhcp",
        "Dns",
        "SourceNat",
        "PortForwarding",
        "Firewall",
        "StaticNat",
    ]
    _refused(api.createPhysicalNetwork, "vlan", zoneid=cloud.ids["zone"], name="bad", vlan="ten-20")


def test_network_bad_input_is_refused_and_nothing_is_made(cloud: Cloud) -> None:
    api = cloud.api
    base = {"zoneid": cloud.ids["zone"], "networkofferingid": cloud.offering, "name": "bad", "displaytext": "bad"}
    _refused(api.createNetwork, "netmask", gateway="10.9.0.1", netmask="255.0.255.0", **base)
    _refused(api.createNetwork, "gateway", gateway="10.9.0.0", netmask="255.255.255.0", **base)
    _refused(api.createNetwork, "startip", gateway="10.9.0.1", netmask="255.255.255.0", startip="10.9.1.5", **base)
    _refused(api.createNetwork, "vlan", gateway="10.9.0.1", netmask="255.255.255.0", vlan="abc", **base)
    _refused(api.createNetwork, "vlan", gateway="10.9.0.1", netmask="255.255.255.0", vlan="99", **base)
    for domain in ("-lab.example", "lab..example", "lab_example.org", "x" * 64 + ".org"):
        _refused(api.createNetwork, "networkdomain", networkdomain=domain, **base)
    assert api.listNetworks(listall=True, name="bad") == {}


def test_networks_vnis_overlap_and_nics(cloud: Cloud) -> None:
    api = cloud.api
    base = {"zoneid": cloud.ids["zone"], "networkofferingid": cloud.offering}
    one = api.createNetwork(name="one", displaytext="one", gateway="10.20.0.1", netmask="255.255.255.0",
                            startip="10.20.0.10", endip="10.20.0.20", vlan="101", **base)["network"]  # fmt: skip
    assert (one["vlan"], one["cidr"], one["gateway"], one["netmask"]) == ("101", "10.20.0.0/24", "10.20.0.1",
                                                                       "255.255.255.0")  # fmt: skip
    _refused(api.createNetwork, "vlan", name="dup", gateway="10.21.0.1", netmask="255.255.255.0", vlan="101", **base)
    _refused(api.createNetwork, "overlaps", name="ov", gateway="10.20.0.129", netmask="255.255.255.128", **base)
    two = api.createNetwork(name="two", displaytext="two", **base)["network"]  # a free /24 and the first free VNI
    assert two["vlan"] == "100" and not ipaddress.ip_network(two["cidr"]).overlaps(ipaddress.ip_network(one["cidr"]))

    deploy = {"zoneid": cloud.ids["zone"], "serviceofferingid": cloud.ids["offering"],
              "templateid": cloud.ids["template"]}  # fmt: skip
    for bad_ip in ("10.20.0.30", "10.21.0.11", "not-an-ip"):
        _refused(api.deployVirtualMachine, "ipaddress", networkids=one["id"], ipaddress=bad_ip, name="bad", **deploy)
    assert api.listVirtualMachines(name="bad") == {}
    vm = api.deployVirtualMachine(name="a", networkids=f"{one['id']},{two['id']}", ipaddress="10.20.0.15", **deploy)
    vm = vm["virtualmachine"]
    nics = sorted(vm["nic"], key=lambda n: int(n["deviceid"]))
    assert [(n["networkid"], n["isdefault"]) for n in nics] == [(one["id"], True), (two["id"], False)]
    assert nics[0]["ipaddress"] == "10.20.0.15" and nics[0]["gateway"] == "10.20.0.1"
    assert nics[0]["netmask"] == "255.255.255.0" and nics[0]["macaddress"].startswith("02:00:")
    assert ipaddress.ip_address(nics[1]["ipaddress"]) in ipaddress.ip_network(two["cidr"])
    _refused(api.deployVirtualMachine, "ipaddress", networkids=one["id"], ipaddress="10.20.0.15", name="b", **deploy)
    b = api.deployVirtualMachine(name="b", iptonetworklist=[{"networkid": one["id"]}], **deploy)["virtualmachine"]
    assert b["nic"][0]["ipaddress"] == "10.20.0.10"  # the first free address of the range
    listed = api.listNics(virtualmachineid=vm["id"])["nic"]
    assert {n["id"] for n in listed} == {n["id"] for n in nics}
    shown = api.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["nic"]
    assert {n["ipaddress"] for n in shown} == {n["ipaddress"] for n in nics}

    api.stopVirtualMachine(id=b["id"])
    b = api.addNicToVirtualMachine(virtualmachineid=b["id"], networkid=two["id"])["virtualmachine"]
    by_net = {n["networkid"]: n for n in b["nic"]}
    assert by_net[two["id"]]["isdefault"] is False and by_net[one["id"]]["isdefault"] is True
    b = api.updateDefaultNicForVirtualMachine(virtualmachineid=b["id"], nicid=by_net[two["id"]]["id"])
    assert {n["networkid"]: n["isdefault"] for n in b["virtualmachine"]["nic"]} == {one["id"]: False, two["id"]: True}
    _refused(api.removeNicFromVirtualMachine, "default", virtualmachineid=b["virtualmachine"]["id"],
             nicid=by_net[two["id"]]["id"])  # fmt: skip
    b = api.removeNicFromVirtualMachine(virtualmachineid=b["virtualmachine"]["id"], nicid=by_net[one["id"]]["id"])
    b = b["virtualmachine"]
    assert [n["networkid"] for n in b["nic"]] == [two["id"]]

    with pytest.raises(CloudStackApiException) as err:
        api.deleteNetwork(id=one["id"])
    assert err.value.error["errorcode"] == 536 and "used by" in err.value.error["errortext"]
    for v in (vm, b):
        api.destroyVirtualMachine(id=v["id"], expunge=True)
    api.deleteNetwork(id=one["id"])
    api.deleteNetwork(id=two["id"])
    assert api.listNetworks(listall=True, zoneid=cloud.ids["zone"]) == {}


def test_a_user_makes_its_own_network_and_sees_only_its_own(cloud: Cloud) -> None:
    keys = create_user_keys(cloud.api, cloud.server.endpoint, username="netuser")
    user = cloud.server.cs(keys, fetch_result=True)
    base = {"zoneid": cloud.ids["zone"], "networkofferingid": cloud.offering}
    with pytest.raises(CloudStackApiException) as err:
        user.createNetwork(name="u", displaytext="u", vlan="102", **base)
    assert err.value.error["errorcode"] == 531 and "vlan" in err.value.error["errortext"]
    mine = user.createNetwork(name="mine", displaytext="mine", **base)["network"]
    admins = cloud.api.createNetwork(name="admins", displaytext="admins", **base)["network"]
    try:
        assert [n["id"] for n in user.listNetworks()["network"]] == [mine["id"]]
        assert mine["account"] == "netuser"
        restarted = user.restartNetwork(id=mine["id"])  # a job: its result is the network
        assert restarted["network"]["id"] == mine["id"] and restarted["network"]["account"] == "netuser"
        with pytest.raises(CloudStackApiException) as err:
            user.deleteNetwork(id=admins["id"])
        assert err.value.error["errorcode"] == 431
    finally:
        user.deleteNetwork(id=mine["id"])
        cloud.api.deleteNetwork(id=admins["id"])


def test_nics_of_a_running_vm(cloud: Cloud) -> None:
    """add/removeNicFromVirtualMachine and updateDefaultNicForVirtualMachine on a Running VM (simulator
    host): the NIC is plugged by a job and shown at once; the refusals are 431 naming the parameter,
    with nothing made or removed."""
    api = cloud.api
    base = {"zoneid": cloud.ids["zone"], "networkofferingid": cloud.offering}
    one = api.createNetwork(name="run-one", displaytext="run-one", **base)["network"]
    two = api.createNetwork(name="run-two", displaytext="run-two", **base)["network"]
    zone = api.createZone(name="other", networktype="Advanced", dns1="8.8.8.8", internaldns1="8.8.8.8")["zone"]
    pn = api.createPhysicalNetwork(zoneid=zone["id"], name="g2", isolationmethods="VXLAN", vlan="200-201")
    pn = pn["physicalnetwork"]
    api.addTrafficType(physicalnetworkid=pn["id"], traffictype="Guest")
    api.updatePhysicalNetwork(id=pn["id"], state="Enabled")
    far = api.createNetwork(name="far", displaytext="far", zoneid=zone["id"], networkofferingid=cloud.offering)
    far = far["network"]
    deploy = {"zoneid": cloud.ids["zone"], "serviceofferingid": cloud.ids["offering"],
              "templateid": cloud.ids["template"]}  # fmt: skip
    vm = api.deployVirtualMachine(name="hot", networkids=one["id"], **deploy)["virtualmachine"]
    assert vm["state"] == "Running"
    vm_id = vm["id"]

    _refused(api.addNicToVirtualMachine, "networkid", virtualmachineid=vm_id, networkid=str(uuid.uuid4()))
    _refused(api.addNicToVirtualMachine, "networkid", virtualmachineid=vm_id, networkid=far["id"])
    _refused(api.addNicToVirtualMachine, "networkid", virtualmachineid=vm_id, networkid=one["id"])
    _refused(api.addNicToVirtualMachine, "ipaddress", virtualmachineid=vm_id, networkid=two["id"],
             ipaddress="192.0.2.9")  # fmt: skip
    assert len(api.listNics(virtualmachineid=vm_id)["nic"]) == 1

    added = api.addNicToVirtualMachine(virtualmachineid=vm_id, networkid=two["id"])["virtualmachine"]
    by_net = {n["networkid"]: n for n in added["nic"]}
    assert added["state"] == "Running" and set(by_net) == {one["id"], two["id"]}
    assert by_net[two["id"]]["isdefault"] is False and by_net[two["id"]]["deviceid"] == "1"
    assert ipaddress.ip_address(by_net[two["id"]]["ipaddress"]) in ipaddress.ip_network(two["cidr"])
    jobs = api.listAsyncJobs()["asyncjobs"]
    assert any(j["cmd"].endswith("addNicToVirtualMachine") and j["jobstatus"] == 1 for j in jobs), jobs

    default, second = by_net[one["id"]]["id"], by_net[two["id"]]["id"]
    _refused(api.removeNicFromVirtualMachine, "default", virtualmachineid=vm_id, nicid=default)
    _refused(api.removeNicFromVirtualMachine, "nicid", virtualmachineid=vm_id, nicid=str(uuid.uuid4()))
    _refused(api.updateDefaultNicForVirtualMachine, "nicid", virtualmachineid=vm_id, nicid=default)
    assert len(api.listNics(virtualmachineid=vm_id)["nic"]) == 2

    moved = api.updateDefaultNicForVirtualMachine(virtualmachineid=vm_id, nicid=second)["virtualmachine"]
    assert {n["id"]: n["isdefault"] for n in moved["nic"]} == {default: False, second: True}
    left = api.removeNicFromVirtualMachine(virtualmachineid=vm_id, nicid=default)["virtualmachine"]
    assert [n["id"] for n in left["nic"]] == [second] and left["state"] == "Running"
    again = api.addNicToVirtualMachine(virtualmachineid=vm_id, networkid=one["id"])["virtualmachine"]
    assert sorted(n["deviceid"] for n in again["nic"]) == ["1", "2"]  # no device id given twice

    used = {n["networkid"]: n for n in again["nic"]}[one["id"]]

    # A failed hot-plug leaves no NIC and frees its address; a failed unplug leaves the NIC in place.
    three = api.createNetwork(name="run-three", displaytext="run-three", **base)["network"]
    cloud.agent.client().call(ConfigureSimulator(command="attach_nic", fail_count=1, fail_message="no PCI slot"))
    wanted = str(next(iter(ipaddress.ip_network(three["cidr"]).hosts())) + 20)
    with pytest.raises(CloudStackApiException) as err:
        api.addNicToVirtualMachine(virtualmachineid=vm_id, networkid=three["id"], ipaddress=wanted)
    assert "no PCI slot" in str(err.value.error), err.value.error
    assert {n["networkid"] for n in api.listNics(virtualmachineid=vm_id)["nic"]} == {one["id"], two["id"]}
    plugged = api.addNicToVirtualMachine(virtualmachineid=vm_id, networkid=three["id"], ipaddress=wanted)
    assert {n["networkid"]: n["ipaddress"] for n in plugged["virtualmachine"]["nic"]}[three["id"]] == wanted
    on_three = {n["networkid"]: n["id"] for n in plugged["virtualmachine"]["nic"]}[three["id"]]
    cloud.agent.client().call(ConfigureSimulator(command="detach_nic", fail_count=1, fail_message="guest kept it"))
    with pytest.raises(CloudStackApiException) as err:
        api.removeNicFromVirtualMachine(virtualmachineid=vm_id, nicid=on_three)
    assert "guest kept it" in str(err.value.error), err.value.error
    assert len(api.listNics(virtualmachineid=vm_id)["nic"]) == 3
    vm_now = api.listVirtualMachines(id=vm_id)["virtualmachine"][0]
    assert vm_now["state"] == "Running" and used["id"] in {n["id"] for n in vm_now["nic"]}
    api.removeNicFromVirtualMachine(virtualmachineid=vm_id, nicid=on_three)
    assert len(api.listNics(virtualmachineid=vm_id)["nic"]) == 2

    api.destroyVirtualMachine(id=vm_id, expunge=True)
    for net in (one, two, three, far):
        api.deleteNetwork(id=net["id"])
