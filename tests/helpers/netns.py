"""Network namespaces for tests: a small switched network of "hosts", each its own namespace, whose
links can be cut for real, without touching the host's own network.

A `Lab` makes a "switch" namespace holding a Linux bridge and one namespace per host, each joined to
the bridge by a veth pair, with an address from 198.18.0.0/24 (RFC 2544's benchmark range, never
routed) and lo up. `lab.run(host, argv)` gives the argv that runs inside a host's namespace
(`ip netns exec`). `lab.cut(a, b)` drops every packet between two hosts in the switch (an nftables
bridge-family rule), so both still reach the others; `lab.restore(a, b)` lifts it. `lab.forward(host,
port)` makes a loopback port in the test's own namespace that reaches `host:port` (a relay process
holding a listening socket of this namespace while it connects from the host's), so the test talks to
servers inside the lab without a route into it. `lab.close()` removes every namespace (which takes
their veths, bridge and rules with them) and ends the relays; `netns_lab()` is a context manager.

`unavailable()` says why namespaces cannot be made here (not root, `ip netns add` refused, no nft), so
a test can skip with that reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

SUBNET = "198.18.0"
PREFIX_LEN = 24
NS_PREFIX = "strt-"


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


class NetnsError(RuntimeError):
    """An `ip`/`nft` command of the lab failed."""


def unavailable() -> str | None:
    """Why this machine cannot give a test its own network namespaces (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command is missing (iproute2, nftables)"
    probe = f"{NS_PREFIX}probe-{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add fails here: {made.stderr.strip()}"
    try:
        table = subprocess.run(["ip", "netns", "exec", probe, "nft", "add", "table", "bridge", "probe"],
                               capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        if table.returncode != 0:
            return f"nftables bridge tables cannot be made in a namespace: {table.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


# A relay: argv[1] is the fd of a listening socket made in the test's namespace; every connection to
# it is joined to a new connection to argv[2]:argv[3], made from the namespace this process runs in.
_RELAY = r"""
import asyncio, socket, sys
listener = socket.socket(fileno=int(sys.argv[1]))
host, port = sys.argv[2], int(sys.argv[3])
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
async def serve(reader, writer):
    try:
        r2, w2 = await asyncio.open_connection(host, port)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, w2), pipe(r2, writer))
async def main():
    server = await asyncio.start_server(serve, sock=listener)
    await server.serve_forever()
asyncio.run(main())
"""


@dataclass
class Lab:
    """Namespaces of one test: `ns[host]` is the namespace name, `addr[host]` the host's address."""

    tag: str
    switch: str
    ns: dict[str, str] = field(default_factory=dict)
    addr: dict[str, str] = field(default_factory=dict)
    relays: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cuts: set[tuple[str, str]] = field(default_factory=set)

    def add_host(self, name: str) -> str:
        """A namespace joined to the switch, lo and eth0 up, the next address; returns that address."""
        index = len(self.ns) + 1
        ns = f"{NS_PREFIX}{self.tag}-{index}"
        _ip("netns", "add", ns)
        self.ns[name] = ns
        port = f"p{index}"
        _ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns, ns=self.switch)
        _ip("link", "set", port, "master", "br0", "up", ns=self.switch)
        address = f"{SUBNET}.{10 + index}"
        _ip("addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        _ip("link", "set", "eth0", "up", ns=ns)
        self.addr[name] = address
        return address

    def run(self, host: str, argv: list[str]) -> list[str]:
        """`argv` run inside the host's namespace (same pid: `ip netns exec` execs the command)."""
        return ["ip", "netns", "exec", self.ns[host], *argv]

    def sysctl(self, host: str, key: str, value: str) -> None:
        """A per-namespace kernel setting (net.*) of one host; the host's own stay as they are."""
        done = subprocess.run(self.run(host, ["sysctl", "-q", "-w", f"{key}={value}"]), capture_output=True,
                              text=True, timeout=30, check=False)  # fmt: skip
        if done.returncode != 0:
            raise NetnsError(f"sysctl {key}={value} in {host}: {done.stderr.strip()}")

    def sysctl_value(self, host: str, key: str) -> str:
        """A per-namespace kernel setting (net.*) of one host, as it is now."""
        done = subprocess.run(self.run(host, ["sysctl", "-n", key]), capture_output=True, text=True, timeout=30,
                              check=False)  # fmt: skip
        if done.returncode != 0:
            raise NetnsError(f"sysctl {key} in {host}: {done.stderr.strip()}")
        return done.stdout.strip()

    def _nft(self, script: str) -> None:
        done = subprocess.run(["ip", "netns", "exec", self.switch, "nft", "-f", "-"], input=script,
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        if done.returncode != 0:
            raise NetnsError(f"nft in the switch: {done.stderr.strip()}\n{script}")

    @staticmethod
    def _table(a: str, b: str) -> str:
        return f"cut_{a}_{b}".replace("-", "_")

    def cut(self, a: str, b: str) -> None:
        """Every packet between hosts a and b is dropped by the switch, silently, as a broken link
        would; their traffic with any other host passes."""
        table = self._table(a, b)
        one, two = self.addr[a], self.addr[b]
        self._nft(
            f"table bridge {table} {{\n"
            "  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"    ip saddr {one} ip daddr {two} drop\n"
            f"    ip saddr {two} ip daddr {one} drop\n"
            f"    arp saddr ip {one} arp daddr ip {two} drop\n"
            f"    arp saddr ip {two} arp daddr ip {one} drop\n"
            "  }\n"
            "}\n"
        )
        self.cuts.add((a, b))

    def restore(self, a: str, b: str) -> None:
        """The link between a and b carries packets again."""
        if (a, b) in self.cuts:
            self._nft(f"delete table bridge {self._table(a, b)}\n")
            self.cuts.discard((a, b))

    def forward(self, host: str, port: int, target: str | None = None) -> int:
        """A port on 127.0.0.1 of the test's namespace that reaches `target` (default: the host's
        address) port `port` from inside the host's namespace."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        local: int = listener.getsockname()[1]
        fd = listener.fileno()
        argv = self.run(host, [sys.executable, "-c", _RELAY, str(fd), target or self.addr[host], str(port)])
        try:
            relay = subprocess.Popen(argv, pass_fds=(fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # fmt: skip
        finally:
            listener.close()
        self.relays.append(relay)
        return local

    def close(self) -> None:
        """Ends the relays and deletes every namespace of the lab (veths, bridge and rules go with them)."""
        for relay in self.relays:
            if relay.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(relay.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                relay.wait(timeout=10)
        self.relays.clear()
        for ns in [*self.ns.values(), self.switch]:
            for pid in pids_in(ns):  # only the lab's own processes live in its namespaces
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _ip("netns", "del", ns, check=False)
        self.ns.clear()


def pids_in(ns: str) -> list[int]:
    """The processes still running inside a namespace (`ip netns pids`)."""
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30, check=False)
    return [int(p) for p in done.stdout.split()]


@contextlib.contextmanager
def netns_lab(hosts: list[str]) -> Iterator[Lab]:
    """A lab with the given hosts (namespaces), removed on the way out, also on failure."""
    tag = uuid.uuid4().hex[:6]
    lab = Lab(tag=tag, switch=f"{NS_PREFIX}{tag}-sw")
    try:
        _ip("netns", "add", lab.switch)
        _ip("link", "add", "br0", "type", "bridge", ns=lab.switch)
        _ip("link", "set", "br0", "up", ns=lab.switch)
        _ip("link", "set", "lo", "up", ns=lab.switch)
        for host in hosts:
            lab.add_host(host)
        yield lab
    finally:
        lab.close()
        _ip("netns", "del", lab.switch, check=False)
