"""The virtual router's public side in the kernel, without QEMU (fast): a namespace of the test plays the
agent's host (the agent's network code runs in it, each call a new process as after an agent restart),
with a public bridge joined to an "outside" namespace, and a "guest" namespace joined to the network's
guest bridge by a veth standing in for a NIC's tap. Checked with real TCP connections: the guest
reaches the outside SNATed to the source NAT address; a port forward lets the outside in only once a
firewall rule allows it (and only from the rule's CIDRs); static NAT; applying twice changes nothing;
removing the network removes the router and its public veth."""

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

import pytest

from strato.agent.network.base import bridge_name, short_id
from strato.agent.network.publicnat import public_if, public_veth
from strato.protocol.messages import (
    DhcpHost,
    NetworkSpec,
    PortForward,
    PublicAllow,
    PublicSpec,
    RouterSpec,
    StaticNat,
)

NET = "net-publicnat-test"
GUEST_IP, GUEST_MAC = "10.60.0.11", "02:00:00:00:60:11"
OUTSIDE_IP = "203.0.113.1"
SOURCE_NAT, FORWARD_IP, STATIC_IP = "203.0.113.10", "203.0.113.11", "203.0.113.12"
PUBLIC_BRIDGE = "strpub0"

_SERVE = (
    "import socket,sys\ns=socket.socket();s.setsockopt(1,2,1);s.bind(('',int(sys.argv[1])));s.listen(8)\n"
    "while True:\n c,a=s.accept();c.sendall((a[0]+' '+sys.argv[1]).encode());c.close()\n"
)
_CONNECT = (
    "import socket,sys\ns=socket.socket();s.settimeout(1.5)\n"
    "s.connect((sys.argv[1],int(sys.argv[2])));print(s.recv(64).decode())\n"
)
_NETWORK = (
    "import asyncio,sys\nfrom pathlib import Path\nfrom strato.agent.network.linux import LinuxNetwork\n"
    "from strato.protocol.messages import NetworkSpec\nnet=LinuxNetwork(Path(sys.argv[1]))\n"
    "if sys.argv[2]=='ensure': asyncio.run(net.ensure_network(NetworkSpec.model_validate_json(sys.stdin.read())))\n"
    "else: asyncio.run(net.remove_network(sys.argv[3]))\n"
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30, capture_output=True)


@dataclass
class Bench:
    host: str
    guest: str
    outside: str
    data_dir: Path

    def _agent(self, *argv: str, spec: NetworkSpec | None = None) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", self.host, sys.executable, "-c", _NETWORK, str(self.data_dir), *argv],
            input=spec.model_dump_json() if spec else "", capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def ensure(self, spec: NetworkSpec) -> None:
        self._agent("ensure", spec=spec)

    def remove(self) -> None:
        self._agent("remove", NET)

    def answer(self, ns: str, ip: str, port: int) -> tuple[str, int] | None:
        """The peer address the server saw and the port it listens on, or None when it failed."""
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _CONNECT, ip, str(port)],
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        if done.returncode != 0:
            return None
        peer, served = done.stdout.split()
        return peer, int(served)

    def connect(self, ns: str, ip: str, port: int) -> str | None:
        """The peer address the server saw, or None when the connection failed."""
        got = self.answer(ns, ip, port)
        return got[0] if got else None

    def router_tables(self) -> str:
        holder = (self.data_dir / "network" / short_id(NET) / "holder.pid").read_text().strip()
        done = subprocess.run(["ip", "netns", "exec", self.host, "nsenter", "-t", holder, "-n", "nft", "list",
                               "ruleset"], capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        return done.stdout


def _wait_listening(ns: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        done = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htln", f"sport = :{port}"],
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        if done.stdout.strip():
            return
        assert proc.poll() is None, "a test server died"
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} in {ns}")


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    missing = [t for t in ("nft", "dnsmasq", "nsenter", "unshare") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"needs root and {', '.join(missing) or 'namespaces'}")
    tag = uuid.uuid4().hex[:6]
    names = {k: f"strt-nat{k[0]}-{tag}" for k in ("host", "guest", "outside")}
    made: list[str] = []
    servers: list[subprocess.Popen[bytes]] = []
    bench = Bench(names["host"], names["guest"], names["outside"], tmp_path / "agent")
    try:
        for ns in names.values():
            try:
                _ip("netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"network namespaces cannot be made here: {exc.stderr!r}")
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        host, guest, outside = names["host"], names["guest"], names["outside"]
        _ip("-n", host, "link", "add", PUBLIC_BRIDGE, "type", "bridge")
        _ip("-n", host, "link", "set", PUBLIC_BRIDGE, "up")
        _ip("-n", host, "link", "add", "pub-out", "type", "veth", "peer", "name", "eth0", "netns", outside)
        _ip("-n", host, "link", "set", "pub-out", "master", PUBLIC_BRIDGE, "up")
        _ip("-n", outside, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
        _ip("-n", outside, "link", "set", "eth0", "up")
        _ip("-n", host, "link", "add", "st-natguest", "type", "veth", "peer", "name", "eth0", "netns", guest)
        _ip("-n", guest, "link", "set", "eth0", "address", GUEST_MAC, "mtu", "1450")
        _ip("-n", guest, "addr", "add", f"{GUEST_IP}/24", "dev", "eth0")
        _ip("-n", guest, "link", "set", "eth0", "up")
        _ip("-n", guest, "route", "add", "default", "via", "10.60.0.1")
        for ns, port in ((outside, 7000), (guest, 5022), (guest, 5023)):
            servers.append(subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _SERVE, str(port)]))
        for (ns, port), proc in zip(((outside, 7000), (guest, 5022), (guest, 5023)), servers, strict=True):
            _wait_listening(ns, port, proc)
        yield bench
    finally:
        for proc in servers:
            proc.kill()
            proc.wait(timeout=10)
        for name in ("dnsmasq.pid", "holder.pid"):  # the router outlives its agent: killed if a test failed
            with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                os.kill(int((bench.data_dir / "network" / short_id(NET) / name).read_text()), signal.SIGKILL)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], timeout=30, check=False)


def _spec(public: PublicSpec | None) -> NetworkSpec:
    router = RouterSpec(gateway="10.60.0.1", prefix=24, hosts=[DhcpHost(mac=GUEST_MAC, ip=GUEST_IP)], public=public)
    return NetworkSpec(id=NET, vni=4242, local="127.0.0.1", router=router)


def _public(allows: list[PublicAllow], static: bool = False) -> PublicSpec:
    forward = PortForward(public_ip=FORWARD_IP, protocol="tcp", public_start=2222, public_end=2222,
                          private_ip=GUEST_IP, private_start=5022, private_end=5022)  # fmt: skip
    shifted = PortForward(public_ip=FORWARD_IP, protocol="tcp", public_start=3000, public_end=3001,
                          private_ip=GUEST_IP, private_start=5022, private_end=5023)  # fmt: skip
    same = PortForward(public_ip=FORWARD_IP, protocol="tcp", public_start=5022, public_end=5023,
                       private_ip=GUEST_IP, private_start=5022, private_end=5023)  # fmt: skip
    return PublicSpec(
        bridge=PUBLIC_BRIDGE, gateway=OUTSIDE_IP, prefix=24, source_nat=SOURCE_NAT,
        addresses=[SOURCE_NAT, FORWARD_IP, *([STATIC_IP] if static else [])], guest_cidr="10.60.0.0/24",
        forwards=[forward, shifted, same],
        static_nats=[StaticNat(public_ip=STATIC_IP, private_ip=GUEST_IP)] if static else [],
        allows=allows,
    )  # fmt: skip


def _guest_on_bridge(bench: Bench) -> None:
    _ip("-n", bench.host, "link", "set", "st-natguest", "master", bridge_name(NET), "mtu", "1450", "up")


def test_source_nat_port_forward_and_firewall(bench: Bench) -> None:
    bench.ensure(_spec(_public([])))
    _guest_on_bridge(bench)
    assert bench.connect(bench.guest, OUTSIDE_IP, 7000) == SOURCE_NAT  # out, SNATed
    assert bench.connect(bench.outside, FORWARD_IP, 2222) is None  # forwarded, but no firewall rule
    assert bench.connect(bench.outside, SOURCE_NAT, 7000) is None

    elsewhere = PublicAllow(public_ip=FORWARD_IP, protocol="tcp", start_port=2222, end_port=2222,
                            cidrs=["198.51.100.0/24"])  # fmt: skip
    bench.ensure(_spec(_public([elsewhere])))
    assert bench.connect(bench.outside, FORWARD_IP, 2222) is None  # the rule is for other sources

    allow = PublicAllow(public_ip=FORWARD_IP, protocol="tcp", start_port=2222, end_port=2222,
                        cidrs=["203.0.113.0/24"])  # fmt: skip
    spec = _spec(_public([allow]))
    bench.ensure(spec)
    first = bench.router_tables()
    bench.ensure(spec)  # a new agent process, the same spec: nothing changes
    assert bench.router_tables() == first
    assert bench.connect(bench.outside, FORWARD_IP, 2222) == OUTSIDE_IP  # in, to the guest's port 5022
    assert bench.connect(bench.outside, FORWARD_IP, 3000) is None  # forwarded, but no firewall rule
    ranges = PublicAllow(public_ip=FORWARD_IP, protocol="tcp", start_port=3000, end_port=3001)
    bench.ensure(_spec(_public([allow, ranges])))
    assert bench.answer(bench.outside, FORWARD_IP, 3000) == (OUTSIDE_IP, 5022)  # each port to its own
    assert bench.answer(bench.outside, FORWARD_IP, 3001) == (OUTSIDE_IP, 5023)
    assert bench.connect(bench.outside, FORWARD_IP, 5023) is None  # a forwarded port no rule opens
    # Hairpin: the guest calls the network's own public address and reaches the forward's target (here
    # itself), seen coming from the gateway so that the answer goes back through the router.
    assert bench.answer(bench.guest, FORWARD_IP, 2222) == ("10.60.0.1", 5022)
    assert bench.answer(bench.guest, FORWARD_IP, 3001) == ("10.60.0.1", 5023)
    _ip("-n", bench.outside, "route", "add", "10.60.0.0/24", "via", SOURCE_NAT)  # straight at the guests
    assert bench.connect(bench.outside, GUEST_IP, 5022) is None
    assert bench.connect(bench.guest, OUTSIDE_IP, 7000) == SOURCE_NAT

    bench.ensure(_spec(_public([allow, PublicAllow(public_ip=STATIC_IP, protocol="tcp")], static=True)))
    assert bench.connect(bench.guest, OUTSIDE_IP, 7000) == STATIC_IP  # a static-NAT guest leaves as its own
    assert bench.connect(bench.outside, STATIC_IP, 5023) == OUTSIDE_IP  # every port of it, as its rule says
    assert bench.answer(bench.guest, STATIC_IP, 5023) == ("10.60.0.1", 5023)  # hairpin to a static NAT address

    bench.ensure(_spec(None))  # the public side taken away
    assert bench.connect(bench.guest, OUTSIDE_IP, 7000) is None
    assert FILTER_NAME not in bench.router_tables()

    bench.ensure(_spec(_public([allow])))
    assert bench.connect(bench.outside, FORWARD_IP, 2222) == OUTSIDE_IP
    bench.remove()
    assert bench.connect(bench.outside, FORWARD_IP, 2222) is None
    assert bench.connect(bench.guest, OUTSIDE_IP, 7000) is None
    links = subprocess.run(["ip", "-n", bench.host, "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert public_veth(NET) not in links and public_if(NET) not in links and bridge_name(NET) not in links


FILTER_NAME = "strato_filter"
