"""Host networking with the kernel: a Linux bridge per network, a VXLAN device on it (flood entries to
the other hosts in the bridge FDB), the NICs' persistent taps, and the virtual router: a network
namespace held by a small process, joined to the bridge by a veth, holding the gateway address and
dnsmasq with one static lease per NIC and, on networks with DNS, the guests' names (dnsmasq.py).

The router's namespace is not a named one (`ip netns add` mounts under /run/netns, which an agent run
by `ip netns exec` may not share with its next run): it is the network namespace of a holder process
started in its own session, found again after an agent restart by its pid file, entered with
`nsenter -t PID -n`. Killing the holder and dnsmasq removes the namespace and its veth.

`ip -j` and `bridge -j` give JSON; nothing here parses free text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from strato.agent.agentlog import get_logger
from strato.agent.drivers.roles import DriverError
from strato.agent.network import dnsmasq, nftables, publicnat
from strato.agent.network.base import HostNetwork, bridge_name, router_if_name, short_id, veth_name, vxlan_name
from strato.protocol.messages import (
    ErrorCode,
    FirewallReport,
    FirewallSpec,
    NetworkReport,
    NetworkSpec,
    PublicSpec,
    RouterSpec,
    firewall_digest,
)

log = get_logger("network")

VXLAN_PORT = 4789
VXLAN_MTU = 1450
"""1500 of the hosts' links less VXLAN's 50 bytes; the guests learn it by DHCP (option 26)."""
ZERO_MAC = "00:00:00:00:00:00"
HOLDER_MARK = "strato-router-holder"
CMD_TIMEOUT_S = 30.0


async def run(*argv: str, check: bool = True, netns_pid: int | None = None) -> tuple[int, str, str]:
    """Run a command (inside the namespace of `netns_pid` when given); DriverError when it fails."""
    full = ("nsenter", "-t", str(netns_pid), "-n", *argv) if netns_pid else argv
    proc = await asyncio.create_subprocess_exec(
        *full, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    out, err = await asyncio.wait_for(proc.communicate(), CMD_TIMEOUT_S)
    rc = proc.returncode or 0
    if check and rc != 0:
        raise DriverError(ErrorCode.INTERNAL, f"{' '.join(full)}: {err.decode().strip() or rc}")
    return rc, out.decode(), err.decode()


async def _json(*argv: str, netns_pid: int | None = None) -> list[dict[str, Any]]:
    _, out, _ = await run(*argv, netns_pid=netns_pid)
    data = json.loads(out or "[]")
    return data if isinstance(data, list) else []


async def link_exists(name: str, netns_pid: int | None = None) -> bool:
    rc, _, _ = await run("ip", "link", "show", "dev", name, check=False, netns_pid=netns_pid)
    return rc == 0


def _alive(pid: int | None, mark: str) -> bool:
    """The process exists and is ours (its command line carries `mark`), not a recycled pid."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return mark.encode() in cmdline


async def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL if it is still there after a second; returns once it is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                return
            await asyncio.sleep(0.01)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def vlan_unavailable() -> str | None:
    """Why this host cannot make 802.1Q devices (None: it can)."""
    if Path("/proc/net/vlan").exists() or Path("/sys/module/8021q").exists():
        return None
    return "802.1Q VLAN devices need the 8021q kernel module, which this host lacks"


NETWORK_ID_FILE = "network-id"


class LinuxNetwork(HostNetwork):
    def __init__(self, data_dir: Path) -> None:
        self.state_dir = Path(data_dir).absolute() / "network"
        self._lock = asyncio.Lock()

    def _dir(self, network_id: str) -> Path:
        return self.state_dir / short_id(network_id)

    async def ensure_network(self, network: NetworkSpec) -> NetworkReport:
        async with self._lock:
            return await self._ensure(network)

    async def _ensure(self, network: NetworkSpec) -> NetworkReport:
        if network.isolation == "vlan":
            why = vlan_unavailable()
            if why is not None:
                raise DriverError(ErrorCode.BAD_REQUEST, f"network {network.id}: VLAN isolation refused: {why}")
            raise DriverError(ErrorCode.BAD_REQUEST, "VLAN isolation is not implemented on this agent yet")
        self._remember(network.id)
        bridge = bridge_name(network.id)
        if not await link_exists(bridge):
            await run("ip", "link", "add", bridge, "type", "bridge")
            await run("ip", "link", "set", bridge, "mtu", str(VXLAN_MTU))
        await run("ip", "link", "set", bridge, "up")
        await self._ensure_vxlan(network, bridge)
        for tap in network.taps:
            if not await link_exists(tap):
                await run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
            await run("ip", "link", "set", tap, "mtu", str(VXLAN_MTU))
            await run("ip", "link", "set", tap, "master", bridge, "up")
        dhcp_pid = None
        if network.router is not None:
            dhcp_pid = await self._ensure_router(network.id, bridge, network.router)
        log.info("network ensured", extra={"network": network.id, "bridge": bridge, "taps": len(network.taps)})
        return NetworkReport(
            id=network.id,
            bridge=bridge,
            taps=sorted(network.taps),
            peers=sorted(network.peers),
            router=network.router is not None,
            dhcp_pid=dhcp_pid,
        )

    async def _ensure_vxlan(self, network: NetworkSpec, bridge: str) -> None:
        vx = vxlan_name(network.id)
        if not await link_exists(vx):
            await run("ip", "link", "add", vx, "type", "vxlan", "id", str(network.vni), "local", network.local,
                      "dstport", str(VXLAN_PORT))  # fmt: skip
        await run("ip", "link", "set", vx, "mtu", str(VXLAN_MTU))
        await run("ip", "link", "set", vx, "master", bridge, "up")
        entries = await _json("bridge", "-j", "fdb", "show", "dev", vx)
        have = {e.get("dst") for e in entries if e.get("mac") == ZERO_MAC and e.get("dst")}
        want = set(network.peers) - {network.local}
        for peer in sorted(want - have):
            await run("bridge", "fdb", "append", ZERO_MAC, "dev", vx, "dst", peer)
        for peer in sorted(p for p in have - want if p):
            await run("bridge", "fdb", "del", ZERO_MAC, "dev", vx, "dst", str(peer), check=False)

    async def _ensure_router(self, network_id: str, bridge: str, router: RouterSpec) -> int:
        state = self._dir(network_id)
        state.mkdir(parents=True, exist_ok=True)
        holder = _read_pid(state / "holder.pid")
        if not _alive(holder, HOLDER_MARK):
            holder = await self._start_holder(state)
        assert holder is not None
        veth, inner = veth_name(network_id), router_if_name(network_id)
        if not await link_exists(inner, netns_pid=holder):
            if await link_exists(veth):
                await run("ip", "link", "del", veth)  # its peer went with a dead holder's namespace
            await run("ip", "link", "add", veth, "type", "veth", "peer", "name", inner)
            await run("ip", "link", "set", inner, "netns", str(holder))
        await run("ip", "link", "set", veth, "mtu", str(VXLAN_MTU))
        await run("ip", "link", "set", veth, "master", bridge, "up")
        await run("ip", "link", "set", "lo", "up", netns_pid=holder)
        await run("ip", "link", "set", inner, "mtu", str(VXLAN_MTU), "up", netns_pid=holder)
        await run("ip", "addr", "replace", f"{router.gateway}/{router.prefix}", "dev", inner, netns_pid=holder)
        await self._ensure_public(network_id, holder, router.public)
        changed = dnsmasq.write_if_changed(state / "dhcp-hosts", dnsmasq.dhcp_hosts(router))
        changed |= dnsmasq.write_if_changed(state / "dns-hosts", dnsmasq.dns_hosts(router))
        argv = dnsmasq.argv(state, inner, router)
        pid = _read_pid(state / "dnsmasq.pid")
        args_file = state / "dnsmasq.args"
        if _alive(pid, str(state)) and args_file.exists() and args_file.read_text() != "\n".join(argv):
            assert pid is not None
            await _stop(pid)  # its options changed (DNS on or off, the domain, the upstream): start anew
            pid = None
        if not _alive(pid, str(state)):
            pid = await self._start_dnsmasq(state, holder, argv)
            args_file.write_text("\n".join(argv))
        elif changed and pid:
            os.kill(pid, signal.SIGHUP)  # re-reads both hosts files; running leases stay
        assert pid is not None
        return pid

    async def _ensure_public(self, network_id: str, holder: int, public: PublicSpec | None) -> None:
        """The router's public veth, addresses, default route and NAT/filter tables as `public` says; with
        no public side, whatever an earlier spec made is removed."""
        outer, inner = publicnat.public_veth(network_id), publicnat.public_if(network_id)
        if public is None:
            if await link_exists(inner, netns_pid=holder):
                await run("ip", "link", "del", inner, netns_pid=holder)
                await publicnat.remove_tables(holder)
            return
        if not await link_exists(public.bridge):
            raise DriverError(ErrorCode.BAD_REQUEST, f"the public bridge {public.bridge} does not exist on this host "
                              "(the kvmnetworklabel of the zone's Public traffic type)")  # fmt: skip
        if not await link_exists(inner, netns_pid=holder):
            if await link_exists(outer):
                await run("ip", "link", "del", outer)
            await run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            await run("ip", "link", "set", inner, "netns", str(holder))
        await run("ip", "link", "set", outer, "master", public.bridge, "up")
        await run("ip", "link", "set", inner, "address", publicnat.public_mac(network_id), "up", netns_pid=holder)
        want = {f"{a}/{public.prefix}" for a in {public.source_nat, *public.addresses}}
        have = set()
        for link in await _json("ip", "-j", "-4", "addr", "show", "dev", inner, netns_pid=holder):
            have |= {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("local")}
        for addr in sorted(want - have):
            await run("ip", "addr", "add", addr, "dev", inner, netns_pid=holder)
        for addr in sorted(have - want):
            await run("ip", "addr", "del", addr, "dev", inner, netns_pid=holder)
        await run("ip", "route", "replace", "default", "via", public.gateway, "dev", inner, netns_pid=holder)
        await run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", netns_pid=holder)
        await publicnat.nft(publicnat.ruleset(network_id, public), holder)

    async def _start_holder(self, state: Path) -> int:
        """A process in a new network namespace, in its own session so it outlives the agent."""
        proc = await asyncio.create_subprocess_exec(
            "unshare", "--net", "--", sys.executable, "-c", "import signal; signal.pause()", HOLDER_MARK, str(state),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        pid = proc.pid
        for _ in range(250):  # unshare execs python: same pid, the mark on its command line
            if _alive(pid, HOLDER_MARK):
                break
            await asyncio.sleep(0.02)
        else:
            raise DriverError(ErrorCode.INTERNAL, "the router namespace's holder process did not start")
        (state / "holder.pid").write_text(str(pid))
        return pid

    async def _start_dnsmasq(self, state: Path, holder: int, argv: list[str]) -> int:
        if shutil.which("dnsmasq") is None:
            raise DriverError(ErrorCode.INTERNAL, "dnsmasq is not installed (Debian package dnsmasq-base)")
        pid_file = state / "dnsmasq.pid"
        pid_file.unlink(missing_ok=True)
        await run(*argv, netns_pid=holder)
        pid = _read_pid(pid_file)
        if pid is None:
            raise DriverError(ErrorCode.INTERNAL, f"dnsmasq wrote no pid file in {state}")
        return pid

    async def remove_network(self, network_id: str) -> None:
        async with self._lock:
            state = self._dir(network_id)
            for name, mark in (("dnsmasq.pid", str(state)), ("holder.pid", HOLDER_MARK)):
                pid = _read_pid(state / name)
                if pid and _alive(pid, mark):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            bridge = bridge_name(network_id)
            if await link_exists(bridge):
                for port in await _json("ip", "-j", "link", "show", "master", bridge):
                    await run("ip", "link", "del", str(port["ifname"]), check=False)
                await run("ip", "link", "del", bridge, check=False)
            for name in (vxlan_name(network_id), veth_name(network_id), publicnat.public_veth(network_id)):
                await run("ip", "link", "del", name, check=False)
            shutil.rmtree(state, ignore_errors=True)
            log.info("network removed", extra={"network": network_id})

    def _remember(self, network_id: str) -> None:
        """The network's id in its state directory, written before any device: what `carried` reads,
        so a half-made network is found and removed too."""
        state = self._dir(network_id)
        state.mkdir(parents=True, exist_ok=True)
        marker = state / NETWORK_ID_FILE
        if not marker.exists():
            marker.write_text(network_id)

    async def carried(self) -> list[str]:
        if not self.state_dir.is_dir():
            return []
        found = []
        for marker in self.state_dir.glob(f"*/{NETWORK_ID_FILE}"):
            with contextlib.suppress(OSError):
                found.append(marker.read_text().strip())
        return sorted(found)

    async def remove_taps(self, taps: list[str]) -> None:
        async with self._lock:
            for tap in taps:
                if await link_exists(tap):
                    await run("ip", "link", "del", tap, check=False)

    # --- security groups (agent/network/nftables.py) ----------------------------------------------

    @property
    def _firewall_file(self) -> Path:
        return self.state_dir / "firewall.json"

    async def sync_firewall(self, firewall: FirewallSpec) -> FirewallReport:
        async with self._lock:
            await nftables.apply(firewall)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self._firewall_file.with_suffix(".tmp")
            tmp.write_text(firewall.model_dump_json())
            tmp.replace(self._firewall_file)  # what firewall_state reports, also after a restart
            log.info("firewall synced", extra={"nics": len(firewall.nics)})
            return FirewallReport(digest=firewall_digest(firewall), nics=len(firewall.nics))

    async def firewall_state(self) -> str:
        try:
            applied = FirewallSpec.model_validate_json(self._firewall_file.read_text())
        except (OSError, ValueError):
            applied = FirewallSpec()
        if applied.nics and not await nftables.table_present():
            return ""
        return firewall_digest(applied)
