"""Public addresses end to end without QEMU: the server in one lab namespace, a real agent (qemu driver,
no guest booted) in another playing the host, with the host's public bridge joined to an "outside"
namespace. The network's router is put on that host the way a first VM start would (the database's
router host set, then restartNetwork, the job that re-sends a network's wanted state); a "guest"
namespace with the NIC's address and MAC stands in for the VM on the guest bridge. Checked with real
TCP connections: the guest reaches the outside as the source NAT address listed by the API; a port
forward made with openfirewall=false is refused until createFirewallRule allows it; deleting the rule
closes it again; an agent restart and a restartNetwork keep it working; deleteNetwork removes it.
Egress rules: on the default offering (egress allowed) a rule blocks its port and its removal opens it
again; on an offering made with egressdefaultpolicy=false nothing leaves but what a rule lets out.
DNS: the router answers the guests' names from real DNS queries and forwards the rest to the zone's dns1."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack

from helpers.agentproc import AgentProcess, start_agent
from helpers.netns import Lab, netns_lab, unavailable
from helpers.serverproc import ServerProcess, start_server, wait_job
from strato.agent.network.base import bridge_name

OUTSIDE_IP = "203.0.113.1"
PUBLIC_BRIDGE = "strpub0"
_SERVE = (
    "import socket,sys\ns=socket.socket();s.setsockopt(1,2,1);s.bind(('',int(sys.argv[1])));s.listen(8)\n"
    "while True:\n c,a=s.accept();c.sendall(a[0].encode());c.close()\n"
)
_CONNECT = (
    "import socket,sys\ns=socket.socket();s.settimeout(1.5)\n"
    "s.connect((sys.argv[1],int(sys.argv[2])));print(s.recv(64).decode())\n"
)

_RESOLVE = """
import socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(struct.pack(">HHHHHH", 0x5354, 0x0100, 1, 0, 0, 0) + labels + b"\\0" + struct.pack(">HH", 1, 1), (server, 53))
r = s.recv(4096)
count, i = struct.unpack(">H", r[6:8])[0], 12
while r[i]:
    i += r[i] + 1
i += 5
found = []
for _ in range(count):
    if r[i] & 0xC0 == 0xC0:
        i += 2
    else:
        while r[i]:
            i += r[i] + 1
        i += 1
    kind, _c, _t, length = struct.unpack(">HHIH", r[i : i + 10])
    i += 10
    if kind == 1:
        found.append(socket.inet_ntoa(r[i : i + length]))
    i += length
print(r[3] & 15, *found)
"""
"""An A query to `server` (a real DNS message over UDP): prints the answer's rcode and its addresses."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30, capture_output=True)


@dataclass
class E2E:
    lab: Lab
    base: Path
    server: ServerProcess
    agent: AgentProcess
    ids: dict[str, str]
    outside: str
    guest: str

    def api(self) -> CloudStack:
        return self.server.cs(timeout=120, fetch_result=True)

    def connect(self, ns: str, ip: str, port: int) -> str | None:
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _CONNECT, ip, str(port)],
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        return done.stdout.strip() if done.returncode == 0 else None

    def resolve(self, ns: str, name: str, server: str) -> tuple[int, list[str]]:
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _RESOLVE, name, server],
                              capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        rcode, *found = done.stdout.split()
        return int(rcode), found

    def host_links(self) -> str:
        return subprocess.run(["ip", "-n", self.lab.ns["host-1"], "-o", "link"], capture_output=True, text=True,
                              timeout=30, check=True).stdout  # fmt: skip


def _serve(ns: str, port: int, procs: list[subprocess.Popen[bytes]]) -> None:
    procs.append(subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _SERVE, str(port)]))
    for _ in range(200):
        done = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htln", f"sport = :{port}"], capture_output=True,
                              text=True, timeout=30, check=False)  # fmt: skip
        if done.stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} in {ns}")


def _relay(lab: Lab, host: str) -> Any:
    return lambda port: f"http://127.0.0.1:{lab.forward(host, port)}"


def _kill_holders(base: Path) -> None:
    """Router holders and dnsmasq the agent left (a failed test): their pid files under `base`."""
    for pid_file in list(base.glob("**/holder.pid")) + list(base.glob("**/dnsmasq.pid")):
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    missing = [t for t in ("nft", "dnsmasq", "qemu-img") if shutil.which(t) is None]
    reason = unavailable() or (f"needs {', '.join(missing)}" if missing else None)
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("natpub-e2e")
    tag = uuid.uuid4().hex[:6]
    outside, guest = f"strt-pubo-{tag}", f"strt-pubg-{tag}"
    made: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []
    with netns_lab(["mgmt", "host-1"]) as lab:
        server: ServerProcess | None = None
        agent: AgentProcess | None = None
        cloud: E2E | None = None
        try:
            for ns in (outside, guest):
                _ip("netns", "add", ns)
                made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            host = lab.ns["host-1"]
            _ip("-n", host, "link", "add", PUBLIC_BRIDGE, "type", "bridge")
            _ip("-n", host, "link", "set", PUBLIC_BRIDGE, "up")
            _ip("-n", host, "link", "add", "pub-out", "type", "veth", "peer", "name", "eth0", "netns", outside)
            _ip("-n", host, "link", "set", "pub-out", "master", PUBLIC_BRIDGE, "up")
            _ip("-n", outside, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
            _ip("-n", outside, "link", "set", "eth0", "up")
            _serve(outside, 7000, procs)
            server = start_server(base / "server", command_prefix=lab.run("mgmt", []), listen_host=lab.addr["mgmt"],
                                  test_url_for=_relay(lab, "mgmt"))  # fmt: skip
            agent = start_agent(base / "agent", token=f"e2e-{tag}", driver="qemu", accel="tcg",
                                command_prefix=lab.run("host-1", []), listen_host=lab.addr["host-1"],
                                test_url_for=_relay(lab, "host-1"))  # fmt: skip
            cloud = E2E(lab, base, server, agent, _make(server, agent, base), outside, guest)
            yield cloud
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(timeout=10)
            if server is not None:
                server.stop()
            if cloud is not None:
                cloud.agent.stop()  # the test may have restarted it
            elif agent is not None:
                agent.stop()
            _kill_holders(base)
            for ns in made:
                subprocess.run(["ip", "netns", "del", ns], timeout=30, check=False)
            shutil.rmtree(base, ignore_errors=True)


def _make(server: ServerProcess, agent: AgentProcess, base: Path) -> dict[str, str]:
    api = server.cs(timeout=120, fetch_result=True)
    zone = api.createZone(name="pub", networktype="Advanced")["zone"]
    pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM")["cluster"][0]
    host = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"], url=agent.url, username="x",
                       password=agent.token, hypervisor="KVM")["host"][0]  # fmt: skip
    store = base / "store"
    store.mkdir()
    api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store}", zoneid=zone["id"])
    image = base / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True, timeout=60)
    tmpl = api.registerTemplate(name="t", displaytext="t", url=f"file://{image}", format="QCOW2", hypervisor="KVM",
                                zoneid=zone["id"], ostypeid="Other Linux (64-bit)")["template"][0]  # fmt: skip
    assert wait_job(server.cs(timeout=120), tmpl["jobid"], 120)["jobstatus"] == 1
    offering = api.createServiceOffering(name="s", displaytext="s", cpunumber=1, cpuspeed=1000, memory=64,
                                         storagetype="local")["serviceoffering"]  # fmt: skip
    pn = api.createPhysicalNetwork(zoneid=zone["id"], name="phys", vlan="6000-6009")["physicalnetwork"]
    api.addTrafficType(physicalnetworkid=pn["id"], traffictype="Guest")
    api.addTrafficType(physicalnetworkid=pn["id"], traffictype="Public", kvmnetworklabel=PUBLIC_BRIDGE)
    api.updatePhysicalNetwork(id=pn["id"], state="Enabled")
    api.createVlanIpRange(zoneid=zone["id"], forvirtualnetwork=True, vlan="untagged", gateway=OUTSIDE_IP,
                          netmask="255.255.255.0", startip="203.0.113.10", endip="203.0.113.19")  # fmt: skip
    nat = api.listNetworkOfferings(name="DefaultIsolatedNetworkOfferingWithSourceNatService")["networkoffering"][0]
    return {"zone": zone["id"], "host": host["id"], "template": tmpl["id"], "offering": offering["id"],
            "netoffering": nat["id"]}  # fmt: skip


def _guest_on_bridge(cloud: E2E, network_id: str, ip: str, mac: str, guest: str | None = None,
                     link: str = "st-e2eguest", gateway: str = "10.60.0.1") -> None:  # fmt: skip
    host, guest = cloud.lab.ns["host-1"], guest or cloud.guest
    _ip("-n", host, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", guest)
    _ip("-n", host, "link", "set", link, "master", bridge_name(network_id), "mtu", "1450", "up")
    _ip("-n", guest, "link", "set", "eth0", "address", mac, "mtu", "1450")
    _ip("-n", guest, "addr", "add", f"{ip}/24", "dev", "eth0")
    _ip("-n", guest, "link", "set", "eth0", "up")
    _ip("-n", guest, "route", "add", "default", "via", gateway)


def test_source_nat_port_forward_and_firewall_from_the_api(e2e: E2E) -> None:
    api, ids = e2e.api(), e2e.ids
    net = api.createNetwork(name="pubnet", displaytext="pubnet", zoneid=ids["zone"],
                            networkofferingid=ids["netoffering"], gateway="10.60.0.1",
                            netmask="255.255.255.0")["network"]  # fmt: skip
    vm = api.deployVirtualMachine(zoneid=ids["zone"], serviceofferingid=ids["offering"], templateid=ids["template"],
                                  name="g", networkids=net["id"], ipaddress="10.60.0.11", startvm=False)  # fmt: skip
    vm = vm["virtualmachine"]
    nic = vm["nic"][0]
    # What a first VM start on host-1 does to the network (no QEMU here): its router goes to that host.
    e2e.server.sql("UPDATE networks SET router_host_id = ?, state = 'Implemented' WHERE id = ?", ids["host"], net["id"])
    api.restartNetwork(id=net["id"])
    (snat,) = api.listPublicIpAddresses(associatednetworkid=net["id"])["publicipaddress"]
    assert snat["issourcenat"] is True
    _guest_on_bridge(e2e, net["id"], nic["ipaddress"], nic["macaddress"])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _serve(e2e.guest, 5022, procs)
        assert e2e.connect(e2e.guest, OUTSIDE_IP, 7000) == snat["ipaddress"]  # out, SNATed to the listed address

        extra = api.associateIpAddress(networkid=net["id"])["ipaddress"]
        api.createPortForwardingRule(ipaddressid=extra["id"], protocol="tcp", publicport=2222, privateport=5022,
                                     virtualmachineid=vm["id"], openfirewall=False)  # fmt: skip
        assert e2e.connect(e2e.outside, extra["ipaddress"], 2222) is None  # no firewall rule yet
        fw = api.createFirewallRule(ipaddressid=extra["id"], protocol="tcp", startport=2222, endport=2222,
                                    cidrlist="203.0.113.0/24")["firewallrule"]  # fmt: skip
        assert e2e.connect(e2e.outside, extra["ipaddress"], 2222) == OUTSIDE_IP

        old = e2e.agent
        old.kill()  # the agent crashes: nothing is cut
        assert e2e.connect(e2e.outside, extra["ipaddress"], 2222) == OUTSIDE_IP
        e2e.agent = start_agent(old.data_dir, token=old.token, driver="qemu", accel="tcg", port=old.port,
                                command_prefix=e2e.lab.run("host-1", []), listen_host=e2e.lab.addr["host-1"],
                                test_url_for=_relay(e2e.lab, "host-1"))  # fmt: skip
        api.restartNetwork(id=net["id"])  # the same state again, from a new agent
        assert e2e.connect(e2e.outside, extra["ipaddress"], 2222) == OUTSIDE_IP
        assert e2e.connect(e2e.guest, OUTSIDE_IP, 7000) == snat["ipaddress"]

        api.deleteFirewallRule(id=fw["id"])
        assert e2e.connect(e2e.outside, extra["ipaddress"], 2222) is None
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
    done = wait_job(e2e.server.cs(), e2e.server.cs().destroyVirtualMachine(id=vm["id"], expunge=True)["jobid"], 120)
    assert done["jobstatus"] == 1, done
    api.deleteNetwork(id=net["id"])
    links = e2e.host_links()
    assert bridge_name(net["id"]) not in links and "sp-" not in links
    assert api.listPublicIpAddresses(listall=True) == {}


def _network_with_guest(e2e: E2E, offering: str, n: int) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A network 10.6n.0.0/24 of `offering` with its router on host-1 and a guest namespace on its bridge
    (link st-e2eg<n>); returns the network, its VM and the guest namespace (made here)."""
    api, ids = e2e.api(), e2e.ids
    gateway = f"10.6{n}.0.1"
    net = api.createNetwork(name=f"eg{n}", displaytext="eg", zoneid=ids["zone"], networkofferingid=offering,
                            gateway=gateway, netmask="255.255.255.0")["network"]  # fmt: skip
    vm = api.deployVirtualMachine(zoneid=ids["zone"], serviceofferingid=ids["offering"], templateid=ids["template"],
                                  name=f"eg{n}", networkids=net["id"], startvm=False)["virtualmachine"]  # fmt: skip
    e2e.server.sql("UPDATE networks SET router_host_id = ?, state = 'Implemented' WHERE id = ?", ids["host"], net["id"])
    api.restartNetwork(id=net["id"])
    guest = f"{e2e.guest}-{n}"
    _ip("netns", "add", guest)
    _ip("-n", guest, "link", "set", "lo", "up")
    nic = vm["nic"][0]
    _guest_on_bridge(e2e, net["id"], nic["ipaddress"], nic["macaddress"], guest, f"st-e2eg{n}", gateway)
    return net, vm, guest


def _host_up(e2e: E2E) -> None:
    deadline = time.monotonic() + 90  # a test before restarted the agent: its host reconnects first
    while e2e.api().listHosts(id=e2e.ids["host"])["host"][0]["state"] != "Up":
        assert time.monotonic() < deadline, "the host did not come back Up"
        time.sleep(0.5)


def test_egress_rules_block_or_let_out_by_the_offerings_policy(e2e: E2E) -> None:
    api = e2e.api()
    procs: list[subprocess.Popen[bytes]] = []
    made: list[tuple[dict[str, Any], dict[str, Any], str]] = []
    deny = api.createNetworkOffering(name="egress-deny", displaytext="deny", guestiptype="Isolated",
                                     traffictype="GUEST", supportedservices="Dhcp,SourceNat,Firewall",
                                     egressdefaultpolicy=False)["networkoffering"]  # fmt: skip
    api.updateNetworkOffering(id=deny["id"], state="Enabled")
    _host_up(e2e)
    try:
        _serve(e2e.outside, 7001, procs)
        made.append(_network_with_guest(e2e, e2e.ids["netoffering"], 1))
        net, _vm, guest = made[-1]
        (snat,) = api.listPublicIpAddresses(associatednetworkid=net["id"])["publicipaddress"]
        assert e2e.connect(guest, OUTSIDE_IP, 7000) == snat["ipaddress"]
        assert e2e.connect(guest, OUTSIDE_IP, 7001) == snat["ipaddress"]
        rule = api.createEgressFirewallRule(networkid=net["id"], protocol="tcp", startport=7001)["firewallrule"]
        assert e2e.connect(guest, OUTSIDE_IP, 7001) is None  # the rule blocks its port
        assert e2e.connect(guest, OUTSIDE_IP, 7000) == snat["ipaddress"]  # and nothing else
        api.deleteEgressFirewallRule(id=rule["id"])
        assert e2e.connect(guest, OUTSIDE_IP, 7001) == snat["ipaddress"]

        made.append(_network_with_guest(e2e, deny["id"], 2))
        net, _vm, guest = made[-1]
        (snat,) = api.listPublicIpAddresses(associatednetworkid=net["id"])["publicipaddress"]
        assert e2e.connect(guest, OUTSIDE_IP, 7000) is None  # nothing leaves without a rule
        api.createEgressFirewallRule(networkid=net["id"], protocol="tcp", startport=7000,
                                     destcidrlist="203.0.113.0/24")  # fmt: skip
        assert e2e.connect(guest, OUTSIDE_IP, 7000) == snat["ipaddress"]
        assert e2e.connect(guest, OUTSIDE_IP, 7001) is None
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        for net, vm, guest in made:
            done = wait_job(e2e.server.cs(), e2e.server.cs().destroyVirtualMachine(id=vm["id"], expunge=True)["jobid"])
            assert done["jobstatus"] == 1, done
            api.deleteNetwork(id=net["id"])
            subprocess.run(["ip", "netns", "del", guest], timeout=30, check=False)
    api.deleteNetworkOffering(id=deny["id"])
    assert "sp-" not in e2e.host_links()


def test_router_dns_answers_the_guests_names_and_forwards_the_rest(e2e: E2E) -> None:
    """The router's DNS: each VM of the network by name and name.networkdomain (the API's address), a name
    of the domain that is no guest's NXDOMAIN, other names forwarded to the zone's dns1 (a DNS server in
    the outside namespace); a new networkdomain answered at once; an expunged VM's name gone."""
    api = e2e.api()
    _host_up(e2e)
    api.updateZone(id=e2e.ids["zone"], dns1=OUTSIDE_IP)
    upstream = subprocess.Popen(["ip", "netns", "exec", e2e.outside, "dnsmasq", "--keep-in-foreground",
                                 "--conf-file=/dev/null", "--no-hosts", "--no-resolv", "--bind-interfaces",
                                 f"--listen-address={OUTSIDE_IP}", "--port=53", "--user=root",
                                 f"--pid-file={e2e.base / 'upstream-dns.pid'}",
                                 "--address=/example.test/203.0.113.99"])  # fmt: skip
    made: list[tuple[dict[str, Any], dict[str, Any], str]] = []
    db: dict[str, Any] | None = None
    try:
        made.append(_network_with_guest(e2e, e2e.ids["netoffering"], 3))
        net, vm, guest = made[-1]
        domain, gateway = net["networkdomain"], "10.63.0.1"
        assert domain.startswith("cs") and domain.endswith("cloud.internal"), domain  # CloudStack's default
        db = api.deployVirtualMachine(zoneid=e2e.ids["zone"], serviceofferingid=e2e.ids["offering"],
                                      templateid=e2e.ids["template"], name="db", networkids=net["id"],
                                      startvm=False)["virtualmachine"]  # fmt: skip
        api.restartNetwork(id=net["id"])
        db_ip, own_ip = db["nic"][0]["ipaddress"], vm["nic"][0]["ipaddress"]
        assert e2e.resolve(guest, "db", gateway) == (0, [db_ip])
        assert e2e.resolve(guest, f"db.{domain}", gateway) == (0, [db_ip])
        assert e2e.resolve(guest, "eg3", gateway) == (0, [own_ip])
        assert e2e.resolve(guest, f"nosuch.{domain}", gateway) == (3, [])  # NXDOMAIN, not asked upstream
        assert e2e.resolve(guest, "www.example.test", gateway) == (0, ["203.0.113.99"])  # the zone's dns1

        updated = api.updateNetwork(id=net["id"], networkdomain="Lab.Example")["network"]
        assert updated["networkdomain"] == "lab.example"
        assert e2e.resolve(guest, "db.lab.example", gateway) == (0, [db_ip])
        assert e2e.resolve(guest, f"db.{domain}", gateway)[1] == []

        done = wait_job(e2e.server.cs(), e2e.server.cs().destroyVirtualMachine(id=db["id"], expunge=True)["jobid"])
        assert done["jobstatus"] == 1, done
        db = None
        assert e2e.resolve(guest, "db.lab.example", gateway) == (3, [])  # the router heard of the expunge
        assert e2e.resolve(guest, "eg3.lab.example", gateway) == (0, [own_ip])
    finally:
        upstream.kill()
        upstream.wait(timeout=10)
        cs = e2e.server.cs()
        for left in [db] if db else []:
            wait_job(cs, cs.destroyVirtualMachine(id=left["id"], expunge=True)["jobid"])
        for net, vm, guest in made:
            done = wait_job(cs, cs.destroyVirtualMachine(id=vm["id"], expunge=True)["jobid"])
            assert done["jobstatus"] == 1, done
            api.deleteNetwork(id=net["id"])
            subprocess.run(["ip", "netns", "del", guest], timeout=30, check=False)
