"""Guest networking with real QEMU guests (TCG, the tiny image built with this tree's guest commands),
the server and two agents each in a network namespace of their own (tests/helpers/netns.py), so every
bridge, tap, VXLAN device, router namespace and dnsmasq lives inside the test's namespaces.

Three guests boot at once: a and b on network A (a on host-1, b on host-2), c on network B (host-2).
- DHCP gives each guest exactly the address the API shows for its NIC (`STRATO-NET: eth0 ip/prefix`);
- b reaches a over VXLAN between the hosts (ping and a TCP probe to a's `tcp-serve`);
- c, on another isolated network, does not reach a;
- deleting the networks (after the VMs are expunged) leaves no bridge, VXLAN device, tap, router
  namespace or dnsmasq on either host.
A VLAN network on these hosts is refused at start with the reason (no 8021q), in a unit check below.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack

from helpers.agentproc import AgentProcess, start_agent
from helpers.netns import Lab, netns_lab, unavailable
from helpers.serverproc import ServerProcess, start_server, wait_job
from strato.protocol.messages import GetConsoleLog

pytestmark = pytest.mark.qemu
PORT = 7000


def _kill_mentioning(base: Path) -> None:
    """QEMU, dnsmasq and router holders the test's agents started (their command lines name `base`)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(base) in cmdline and int(entry.name) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _skip_reason() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "needs qemu-system-x86_64"
    if shutil.which("dnsmasq") is None:
        return "needs dnsmasq (Debian package dnsmasq-base)"
    return unavailable()


@dataclass
class NetCloud:
    lab: Lab
    base: Path
    server: ServerProcess
    agents: dict[str, AgentProcess]
    ids: dict[str, str]

    def api(self) -> CloudStack:
        return self.server.cs(timeout=120)

    def console(self, host: str, vm: dict[str, Any]) -> str:
        return self.agents[host].client(timeout=30).call(GetConsoleLog(name=vm["instancename"], tail_bytes=None)).text

    def links(self, host: str) -> list[str]:
        done = subprocess.run(["ip", "-j", "-n", self.lab.ns[host], "link", "show"], capture_output=True, text=True,
                              timeout=30, check=True)  # fmt: skip
        return [str(link["ifname"]) for link in json.loads(done.stdout)]


def _relay(lab: Lab, host: str) -> Any:
    return lambda port: f"http://127.0.0.1:{lab.forward(host, port)}"


MakeIds = Callable[[ServerProcess, dict[str, AgentProcess], Path, Path], dict[str, str]]


@contextlib.contextmanager
def lab_cloud(base: Path, token_prefix: str, make: MakeIds) -> Iterator[NetCloud]:
    """A server and two QEMU agents, each in its own namespace of a lab, the tiny guest built from this
    tree (its guest commands: net-up, ping, tcp-probe, tcp-serve), `make` adding the zone and the rest;
    everything stopped and removed at the end, also after a failure."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from strato.image.tiny import build_tiny_image

    image = base / "tiny.qcow2"
    build_tiny_image(image)
    with netns_lab(["mgmt", "host-1", "host-2"]) as lab:
        server: ServerProcess | None = None
        agents: dict[str, AgentProcess] = {}
        try:
            server = start_server(base / "server", command_prefix=lab.run("mgmt", []), listen_host=lab.addr["mgmt"],
                                  test_url_for=_relay(lab, "mgmt"))  # fmt: skip
            for n, host in enumerate(("host-1", "host-2"), start=1):
                agents[host] = start_agent(
                    base / f"a{n}", token=f"{token_prefix}{n}-{uuid.uuid4().hex[:6]}", driver="qemu", accel="tcg",
                    command_prefix=lab.run(host, []), listen_host=lab.addr[host], test_url_for=_relay(lab, host),
                )  # fmt: skip
            yield NetCloud(lab, base, server, agents, make(server, agents, base, image))
        finally:
            if server is not None:
                server.stop()
            for agent in agents.values():
                agent.stop()
            _kill_mentioning(base)
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def netcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetCloud]:
    with lab_cloud(tmp_path_factory.mktemp("netq"), "n", _make) as cloud:
        yield cloud


def _make(server: ServerProcess, agents: dict[str, AgentProcess], base: Path, image: Path) -> dict[str, str]:
    api = server.cs(timeout=120)
    ids: dict[str, str] = {}
    zone = api.createZone(name="net", networktype="Advanced")["zone"]
    pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM")["cluster"][0]
    ids["zone"] = zone["id"]
    for host, agent in agents.items():
        ids[host] = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"], url=agent.url,
                                username="x", password=agent.token, hypervisor="KVM")["host"][0]["id"]  # fmt: skip
    store = base / "store"
    store.mkdir()
    api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store}", zoneid=zone["id"])
    tmpl = api.registerTemplate(name="t", displaytext="t", url=f"file://{image}", format="QCOW2", hypervisor="KVM",
                                zoneid=zone["id"], ostypeid="Other Linux (64-bit)")["template"][0]  # fmt: skip
    assert wait_job(api, tmpl["jobid"], 120)["jobstatus"] == 1
    ids["template"] = tmpl["id"]
    ids["offering"] = api.createServiceOffering(name="s", displaytext="s", cpunumber=1, cpuspeed=1000,
                                                memory=128, storagetype="local")["serviceoffering"]["id"]  # fmt: skip
    pn = api.createPhysicalNetwork(zoneid=zone["id"], name="guest", vlan="5000-5009")
    assert wait_job(api, pn["jobid"])["jobstatus"] == 1
    offering = api.listNetworkOfferings(name="DefaultIsolatedNetworkOfferingWithSourceNatService")
    ids["netoffering"] = offering["networkoffering"][0]["id"]
    return ids


def _deploy(cloud: NetCloud, name: str, host: str, network: str, ip: str, commands: str) -> str:
    started = cloud.api().deployVirtualMachine(
        zoneid=cloud.ids["zone"], serviceofferingid=cloud.ids["offering"], templateid=cloud.ids["template"],
        name=name, hostid=cloud.ids[host], networkids=network, ipaddress=ip,
        **{"details[0].guestcommands": commands},
    )  # fmt: skip
    return str(started["jobid"])


def _wait_console(cloud: NetCloud, host: str, vm: dict[str, Any], pattern: str, timeout: float = 150) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = cloud.console(host, vm)
        if re.search(pattern, log):
            return log
        assert time.monotonic() < deadline, f"{pattern!r} not seen on {vm['name']}:\n{log[-2500:]}"
        time.sleep(2)


def test_dhcp_vxlan_isolation_and_cleanup(netcloud: NetCloud) -> None:
    cloud, api = netcloud, netcloud.api()
    nets = {}
    for key, prefix in (("A", "10.30.0"), ("B", "10.31.0")):
        nets[key] = api.createNetwork(name=f"net-{key}", displaytext=key, zoneid=cloud.ids["zone"],
                                      networkofferingid=cloud.ids["netoffering"], gateway=f"{prefix}.1",
                                      netmask="255.255.255.0")["network"]  # fmt: skip
    jobs = {
        "a": _deploy(cloud, "a", "host-1", nets["A"]["id"], "10.30.0.11", f"net-up;tcp-serve:{PORT}"),
        "b": _deploy(cloud, "b", "host-2", nets["A"]["id"], "10.30.0.12",
                     f"net-up;ping:10.30.0.11:90;tcp-probe:10.30.0.11:{PORT}:60"),
        "c": _deploy(cloud, "c", "host-2", nets["B"]["id"], "10.31.0.11",
                     f"net-up;ping:10.30.0.11:5;tcp-probe:10.30.0.11:{PORT}:5"),
    }  # fmt: skip
    vms = {}
    for key, job in jobs.items():
        done = wait_job(api, job, 180)
        assert done["jobstatus"] == 1, done
        vms[key] = done["jobresult"]["virtualmachine"]
    hosts = {"a": "host-1", "b": "host-2", "c": "host-2"}
    for key, vm in vms.items():
        nic = vm["nic"][0]
        log = _wait_console(cloud, hosts[key], vm, r"STRATO-NET: eth0 \S+")
        assert f"STRATO-NET: eth0 {nic['ipaddress']}/24" in log, log[-2000:]
    log_b = _wait_console(cloud, "host-2", vms["b"], r"STRATO-RUN-END tcp-probe:\S+ rc=\d")
    assert "STRATO-RUN-END ping:10.30.0.11:90 rc=0" in log_b, log_b[-2000:]
    assert f"STRATO-RUN-END tcp-probe:10.30.0.11:{PORT}:60 rc=0" in log_b, log_b[-2000:]
    log_c = _wait_console(cloud, "host-2", vms["c"], r"STRATO-RUN-END tcp-probe:\S+ rc=\d")
    assert "STRATO-RUN-END ping:10.30.0.11:5 rc=1" in log_c, log_c[-2000:]
    assert f"STRATO-RUN-END tcp-probe:10.30.0.11:{PORT}:5 rc=1" in log_c, log_c[-2000:]

    _agents_restart_without_cutting_guests(cloud, nets["A"])

    for vm in vms.values():
        done = wait_job(api, api.destroyVirtualMachine(id=vm["id"], expunge=True)["jobid"], 120)
        assert done["jobstatus"] == 1, done
    _networks_deleted_while_a_host_is_down(cloud, list(nets.values()))
    survivors = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _mentions(p, cloud.base, b"dnsmasq")]
    assert survivors == []


def _guest_links(cloud: NetCloud, host: str) -> list[str]:
    return [n for n in cloud.links(host) if n.startswith(("sb-", "sx-", "sv-", "st-"))]


def _networks_deleted_while_a_host_is_down(cloud: NetCloud, nets: list[dict[str, Any]]) -> None:
    """deleteNetwork succeeds with host-1's agent down; host-2 is clean at once, and host-1 (which ran
    network A's guest and router) is cleaned once its agent is back and reports what it carries."""
    api = cloud.api()
    old = cloud.agents["host-1"]
    old.kill()
    for net in nets:
        assert wait_job(api, api.deleteNetwork(id=net["id"])["jobid"])["jobstatus"] == 1
    assert _guest_links(cloud, "host-2") == []
    assert _guest_links(cloud, "host-1") != [], "host-1 lost its devices while its agent was down"
    cloud.agents["host-1"] = start_agent(
        old.data_dir, token=old.token, driver="qemu", accel="tcg", port=old.port,
        command_prefix=cloud.lab.run("host-1", []), listen_host=cloud.lab.addr["host-1"],
        test_url_for=_relay(cloud.lab, "host-1"),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while _guest_links(cloud, "host-1") or _router_processes(cloud.base):
        assert time.monotonic() < deadline, (_guest_links(cloud, "host-1"), _router_processes(cloud.base))
        time.sleep(1)


def _router_processes(base: Path) -> dict[str, int]:
    """Command line -> pid of the router holders and dnsmasq processes the test's agents started."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _mentions(proc, base, b"dnsmasq"):
            found[(proc / "cmdline").read_bytes().decode(errors="replace")] = int(proc.name)
    return found


def _agents_restart_without_cutting_guests(cloud: NetCloud, network: dict[str, Any]) -> None:
    """Both agents crash and come back; restartNetwork re-sends the wanted state: the routers and
    dnsmasq are the same processes, and guest a still answers from its network's router namespace."""
    before = _router_processes(cloud.base)
    assert len(before) == 4, before  # a holder and a dnsmasq per network
    for host, old in list(cloud.agents.items()):
        old.kill()
        cloud.agents[host] = start_agent(
            old.data_dir, token=old.token, driver="qemu", accel="tcg", port=old.port,
            command_prefix=cloud.lab.run(host, []), listen_host=cloud.lab.addr[host],
            test_url_for=_relay(cloud.lab, host),
        )  # fmt: skip
    api = cloud.api()
    assert wait_job(api, api.restartNetwork(id=network["id"])["jobid"])["jobstatus"] == 1
    assert _router_processes(cloud.base) == before
    holder = next(pid for line, pid in before.items() if "strato-router-holder" in line and
                  _holds(pid, "10.30.0.1"))  # fmt: skip
    ping = subprocess.run(["nsenter", "-t", str(holder), "-n", "busybox", "ping", "-c", "1", "-W", "3", "10.30.0.11"],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert ping.returncode == 0, ping.stdout + ping.stderr


def _holds(pid: int, address: str) -> bool:
    done = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-j", "addr", "show"], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    return address in done.stdout


def _mentions(proc: Path, base: Path, what: bytes) -> bool:
    try:
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return str(base).encode() in cmdline and (what in cmdline or b"strato-router-holder" in cmdline)


def test_vlan_isolation_is_refused_without_8021q(tmp_path: Path) -> None:
    from strato.agent.drivers.roles import DriverError
    from strato.agent.network.linux import LinuxNetwork, vlan_unavailable
    from strato.protocol.messages import NetworkSpec

    if vlan_unavailable() is None:
        pytest.skip("this host has 8021q: VLAN isolation is not refused here")
    spec = NetworkSpec(id="vlan-net", isolation="vlan", vni=42, local="198.18.0.1")
    with pytest.raises(DriverError) as err:
        asyncio.run(LinuxNetwork(tmp_path).ensure_network(spec))
    assert "8021q" in err.value.message
