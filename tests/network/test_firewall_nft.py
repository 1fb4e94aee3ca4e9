"""The agent's security-group filter in the kernel, without QEMU (fast): a bridge in a namespace of the
test, named as a network's, with two veths named as NIC taps, each joined to a namespace playing a
guest. The rule set the agent applies (agent/network/nftables.py) is checked with real TCP connections:
ingress by CIDR, stateful replies, egress limited by its rules, and anti-spoofing (another source IP
or MAC from a tap is dropped even where the rules would let that address in)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from strato.agent.network.base import bridge_name
from strato.protocol.messages import FirewallRule, FirewallSpec, NicFirewall

NET = "net-fw-test"
GUESTS = {"a": ("10.50.0.11", "02:00:00:00:50:11"), "b": ("10.50.0.12", "02:00:00:00:50:12")}

_SERVE = "import socket,sys\ns=socket.socket();s.setsockopt(1,2,1);s.bind(('',int(sys.argv[1])));s.listen(8)\n" \
         "while True:\n c,_=s.accept();c.sendall(b'pong');c.close()\n"  # fmt: skip
_CONNECT = "import socket,sys\ns=socket.socket();s.settimeout(2)\nif len(sys.argv)>3: s.bind((sys.argv[3],0))\n" \
           "s.connect((sys.argv[1],int(sys.argv[2])));assert s.recv(4)==b'pong'\n"  # fmt: skip

_APPLY = "import asyncio,sys\nfrom strato.agent.network import nftables\nfrom strato.protocol.messages import " \
         "FirewallSpec\nasyncio.run(nftables.apply(FirewallSpec.model_validate_json(sys.stdin.read())))"  # fmt: skip


@dataclass
class Bench:
    host: str
    guests: dict[str, str]
    taps: dict[str, str]

    def apply(self, spec: FirewallSpec) -> None:
        code = _APPLY
        done = subprocess.run(["ip", "netns", "exec", self.host, sys.executable, "-c", code],
                              input=spec.model_dump_json(), capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr

    def reaches(self, src: str, dst: str, port: int, source_ip: str | None = None) -> bool:
        argv = [GUESTS[dst][0], str(port), *([source_ip] if source_ip else [])]
        done = subprocess.run(["ip", "netns", "exec", self.guests[src], sys.executable, "-c", _CONNECT, *argv],
                              capture_output=True, timeout=30, check=False)  # fmt: skip
        return done.returncode == 0

    def guest_ip(self, name: str, *args: str) -> None:
        subprocess.run(["ip", "-n", self.guests[name], *args], check=True, timeout=30)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30, capture_output=True)


def _wait_listening(ns: str, port: int) -> None:
    """The guest's server answers on its own loopback (started processes take a moment on a busy machine)."""
    deadline = time.monotonic() + 30
    while subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _CONNECT, "127.0.0.1", str(port)],
                         capture_output=True, timeout=30, check=False).returncode != 0:  # fmt: skip
        assert time.monotonic() < deadline, f"the server on port {port} in {ns} did not start"
        time.sleep(0.2)


@pytest.fixture
def bench() -> Iterator[Bench]:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("needs root and nft")
    tag = uuid.uuid4().hex[:6]
    host = f"strt-fwh-{tag}"
    guests = {g: f"strt-fw{g}-{tag}" for g in GUESTS}
    taps = {g: f"st-fw{g}{tag}" for g in GUESTS}
    servers: list[subprocess.Popen[bytes]] = []
    made: list[str] = []
    try:
        for ns in (host, *guests.values()):
            _ip("netns", "add", ns)
            made.append(ns)
        bridge = bridge_name(NET)
        _ip("-n", host, "link", "add", bridge, "type", "bridge")
        _ip("-n", host, "link", "set", bridge, "up")
        for g, (addr, mac) in GUESTS.items():
            _ip("-n", host, "link", "add", taps[g], "type", "veth", "peer", "name", "eth0", "netns", guests[g])
            _ip("-n", host, "link", "set", taps[g], "master", bridge, "up")
            _ip("-n", guests[g], "link", "set", "eth0", "address", mac)
            _ip("-n", guests[g], "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", guests[g], "link", "set", "eth0", "up")
            _ip("-n", guests[g], "link", "set", "lo", "up")
            for port in (5000, 5001):
                servers.append(subprocess.Popen(["ip", "netns", "exec", guests[g], sys.executable, "-c", _SERVE,
                                                 str(port)]))  # fmt: skip
        for g in GUESTS:
            for port in (5000, 5001):
                _wait_listening(guests[g], port)
        yield Bench(host, guests, taps)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait(timeout=10)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], timeout=30, check=False)


def _nic(bench: Bench, g: str, ingress: list[FirewallRule], egress: list[FirewallRule] | None = None) -> NicFirewall:
    ip, mac = GUESTS[g]
    return NicFirewall(nic=f"nic-{g}", network_id=NET, tap=bench.taps[g], mac=mac, ip=ip, router="10.50.0.1",
                       ingress=ingress, egress=egress or [])  # fmt: skip


def test_ingress_egress_state_and_anti_spoofing(bench: Bench) -> None:
    assert bench.reaches("b", "a", 5000) and bench.reaches("a", "b", 5001)  # no filter yet
    tcp = lambda port, **peer: FirewallRule(protocol="tcp", start_port=port, end_port=port, **peer)  # noqa: E731
    spec = FirewallSpec(nics=[_nic(bench, "a", [tcp(5000, cidr="10.50.0.0/24")]), _nic(bench, "b", [])])
    bench.apply(spec)
    bench.apply(spec)  # idempotent: the same tables again
    assert bench.reaches("b", "a", 5000)  # allowed in; the reply passes by conntrack
    assert not bench.reaches("b", "a", 5001)  # no rule for that port
    assert not bench.reaches("a", "b", 5000)  # b lets nothing in

    # Anti-spoofing: b sends from another address of a's allowed CIDR, then with another MAC.
    bench.guest_ip("b", "addr", "add", "10.50.0.99/24", "dev", "eth0")
    assert not bench.reaches("b", "a", 5000, source_ip="10.50.0.99")
    assert bench.reaches("b", "a", 5000, source_ip=GUESTS["b"][0])
    bench.guest_ip("b", "link", "set", "eth0", "address", "02:00:00:00:50:99")
    assert not bench.reaches("b", "a", 5000)
    bench.guest_ip("b", "link", "set", "eth0", "address", GUESTS["b"][1])

    # Egress: b may only open TCP 5001 (a lets in 5000 and 5001 from b now): 5000 is cut at b's side.
    groups = {"grp-a": [GUESTS["a"][0]]}
    spec = FirewallSpec(
        nics=[_nic(bench, "a", [tcp(5000, cidr="10.50.0.12/32"), tcp(5001, cidr="10.50.0.12/32")]),
              _nic(bench, "b", [], egress=[tcp(5001, group="grp-a")])],
        groups=groups,
    )  # fmt: skip
    bench.apply(spec)
    assert bench.reaches("b", "a", 5001)
    assert not bench.reaches("b", "a", 5000)

    bench.apply(FirewallSpec())  # no NIC left: the tables go
    done = subprocess.run(["ip", "netns", "exec", bench.host, "nft", "list", "tables"], capture_output=True,
                          text=True, timeout=30, check=True)  # fmt: skip
    assert "strato_sg" not in done.stdout
    assert bench.reaches("a", "b", 5000)
