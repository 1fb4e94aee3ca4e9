"""Security groups on one host as nftables rule sets (the `nft -j` JSON interface).

Two tables, replaced together in one transaction by every sync (so a sync is atomic and idempotent):
- `bridge strato_sg`: anti-spoofing on each NIC's tap, as CloudStack does on KVM: frames from the tap
  must carry the NIC's MAC, ARP must announce its MAC and IP (or 0.0.0.0 while it probes), IPv4 must
  come from its IP (or be a DHCP request from 0.0.0.0); anything else (IPv6, other ether types) is
  dropped.
- `inet strato_sg`: the groups' rules, stateful (replies of allowed connections pass by conntrack).
  Bridged IPv4 reaches the inet forward hook through br_netfilter (`net.bridge.bridge-nf-call-iptables`,
  per network namespace, set to 1 here); its in/out interface is then the bridge, so a NIC's traffic is
  recognised by its bridge and address, sound because the bridge table stops spoofed sources first.
  A packet from NIC a passes a's egress chain (which returns when allowed), then the destination
  NIC's ingress chain (accept or drop), so VM-to-VM traffic on one host meets both sides' rules.
  Group members are one named set of addresses per group. The NICs' chains are reached through verdict
  maps (tap; bridge . address), one lookup per packet however many NICs the host has."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
from pathlib import Path
from typing import Any

from strato.agent.drivers.roles import DriverError
from strato.agent.network.base import bridge_name
from strato.protocol.messages import ErrorCode, FirewallRule, FirewallSpec, NicFirewall

TABLE = "strato_sg"
BRIDGE_NF_SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-iptables"

Expr = dict[str, Any]


def _short(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def set_name(group_id: str) -> str:
    return f"g-{_short(group_id)}"


def _chain(kind: str, nic: NicFirewall) -> str:
    return f"{kind}-{_short(nic.nic)}"


def _match(left: Any, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": field}}


def _meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def _net(cidr: str) -> Any:
    net = ipaddress.IPv4Network(cidr, strict=False)
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _peer(rule: FirewallRule, field: str) -> list[Expr]:
    """The rule's source (ingress, field saddr) or destination (egress, daddr) match."""
    if rule.group is not None:
        return [_match(_payload("ip", field), f"@{set_name(rule.group)}")]
    if rule.cidr is None or ipaddress.IPv4Network(rule.cidr, strict=False).prefixlen == 0:
        return [_match(_meta("nfproto"), "ipv4")]
    return [_match(_payload("ip", field), _net(rule.cidr))]


def _l4(rule: FirewallRule) -> list[Expr]:
    if rule.protocol == "all":
        return []
    if rule.protocol == "icmp":
        out = [_match(_meta("l4proto"), "icmp")]
        if rule.icmp_type is not None and rule.icmp_type >= 0:
            out.append(_match(_payload("icmp", "type"), rule.icmp_type))
            if rule.icmp_code is not None and rule.icmp_code >= 0:
                out.append(_match(_payload("icmp", "code"), rule.icmp_code))
        return out
    start, end = rule.start_port, rule.end_port
    if start is None:
        return [_match(_meta("l4proto"), rule.protocol)]
    end = start if end is None else end
    ports: Any = start if start == end else {"range": [start, end]}
    return [_match(_payload(rule.protocol, "dport"), ports)]


def _rule(family: str, chain: str, expr: list[Expr]) -> Expr:
    return {"add": {"rule": {"family": family, "table": TABLE, "chain": chain, "expr": expr}}}


def _base_chain(family: str, hook: str) -> Expr:
    return {"add": {"chain": {"family": family, "table": TABLE, "name": "fw", "type": "filter", "hook": hook,
                              "prio": 0, "policy": "accept"}}}  # fmt: skip


def _chain_add(family: str, name: str) -> Expr:
    return {"add": {"chain": {"family": family, "table": TABLE, "name": name}}}


def _anti_spoof(nic: NicFirewall) -> list[Expr]:
    chain = _chain("as", nic)

    def r(*expr: Expr) -> Expr:
        return _rule("bridge", chain, list(expr))

    return [
        _chain_add("bridge", chain),
        r(_match(_payload("ether", "saddr"), nic.mac, "!="), {"drop": None}),
        r(_match(_payload("arp", "saddr ether"), nic.mac, "!="), {"drop": None}),
        r(_match(_payload("arp", "saddr ip"), {"set": [nic.ip, "0.0.0.0"]}, "!="), {"drop": None}),
        r(_match(_payload("ether", "type"), "arp"), {"accept": None}),
        r(
            _match(_payload("ip", "saddr"), "0.0.0.0"),
            _match(_payload("udp", "sport"), 68),
            _match(_payload("udp", "dport"), 67),
            {"accept": None},
        ),
        r(_match(_payload("ip", "saddr"), nic.ip, "!="), {"drop": None}),
        r(_match(_payload("ether", "type"), "ip"), {"accept": None}),
        r({"drop": None}),
    ]


def _filters(nic: NicFirewall) -> list[Expr]:
    """The NIC's ingress chain (accept or drop) and egress chain (return when allowed, else drop)."""
    cin, cout = _chain("in", nic), _chain("out", nic)
    body = [_chain_add("inet", cin), _chain_add("inet", cout)]
    if nic.router:
        body.append(_rule("inet", cin, [_match(_payload("ip", "saddr"), nic.router),
                                        _match(_payload("udp", "sport"), 67), {"accept": None}]))  # fmt: skip
    for rule in nic.ingress:
        body.append(_rule("inet", cin, [*_peer(rule, "saddr"), *_l4(rule), {"accept": None}]))
    body.append(_rule("inet", cin, [{"drop": None}]))
    if nic.egress:
        body.append(_rule("inet", cout, [_match(_payload("udp", "dport"), 67), {"return": None}]))
        for rule in nic.egress:
            body.append(_rule("inet", cout, [*_peer(rule, "daddr"), *_l4(rule), {"return": None}]))
        body.append(_rule("inet", cout, [{"drop": None}]))
    return body


def _map(family: str, name: str, key: str | list[str], elems: list[Any]) -> Expr:
    entry: dict[str, Any] = {"family": family, "table": TABLE, "name": name, "type": key, "map": "verdict"}
    if elems:
        entry["elem"] = elems
    return {"add": {"map": entry}}


def _jump(chain: str) -> Expr:
    return {"jump": {"target": chain}}


def _dispatch(spec: FirewallSpec) -> list[Expr]:
    """Verdict maps from a packet's tap (bridge) or bridge and address (inet) to the NIC's chain, so a
    packet costs one lookup whatever the number of NICs; egress is looked up before ingress."""
    nics = sorted(spec.nics, key=lambda n: n.nic)

    def by_address(kind: str) -> list[Any]:
        return [[{"concat": [bridge_name(n.network_id), n.ip]}, _jump(_chain(kind, n))] for n in nics]

    iif = _meta("iifname")
    return [
        _map("bridge", "spoof", "ifname", [[n.tap, _jump(_chain("as", n))] for n in nics]),
        _map("inet", "egress", ["ifname", "ipv4_addr"], by_address("out")),
        _map("inet", "ingress", ["ifname", "ipv4_addr"], by_address("in")),
        _rule("bridge", "fw", [{"vmap": {"key": iif, "data": "@spoof"}}]),
        _rule("inet", "fw", [{"vmap": {"key": {"concat": [iif, _payload("ip", "saddr")]}, "data": "@egress"}}]),
        _rule("inet", "fw", [{"vmap": {"key": {"concat": [iif, _payload("ip", "daddr")]}, "data": "@ingress"}}]),
    ]


def ruleset(spec: FirewallSpec) -> dict[str, Any]:
    """The transaction making the host's tables exactly `spec` (an empty spec removes them)."""
    cmds: list[Expr] = []
    for family in ("bridge", "inet"):
        cmds.append({"add": {"table": {"family": family, "name": TABLE}}})
        cmds.append({"delete": {"table": {"family": family, "name": TABLE}}})
    if not spec.nics:
        return {"nftables": cmds}
    for family in ("bridge", "inet"):
        cmds.append({"add": {"table": {"family": family, "name": TABLE}}})
    cmds.append(_base_chain("bridge", "forward"))
    cmds.append(_base_chain("inet", "forward"))
    cmds.append(_rule("inet", "fw", [_match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                                     {"accept": None}]))  # fmt: skip
    for group_id, members in sorted(spec.groups.items()):
        entry: dict[str, Any] = {"family": "inet", "table": TABLE, "name": set_name(group_id), "type": "ipv4_addr"}
        if members:
            entry["elem"] = sorted(set(members))
        cmds.append({"add": {"set": entry}})
    for nic in sorted(spec.nics, key=lambda n: n.nic):
        cmds.extend(_anti_spoof(nic))
        cmds.extend(_filters(nic))
    cmds.extend(_dispatch(spec))
    return {"nftables": cmds}


async def apply(spec: FirewallSpec, timeout_s: float = 30.0) -> None:
    """Run the transaction (`nft -j -f -`); DriverError with nft's message when the kernel refuses."""
    if spec.nics:
        sysctl = Path(BRIDGE_NF_SYSCTL)
        if not sysctl.exists():
            raise DriverError(ErrorCode.INTERNAL, "security groups need br_netfilter (no bridge-nf-call-iptables)")
        if sysctl.read_text().strip() != "1":
            sysctl.write_text("1")
    proc = await asyncio.create_subprocess_exec(
        "nft", "-j", "-f", "-", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(json.dumps(ruleset(spec)).encode()), timeout_s)
    if proc.returncode != 0:
        raise DriverError(ErrorCode.INTERNAL, f"nft refused the security-group rule set: {err.decode().strip()}")


async def table_present() -> bool:
    proc = await asyncio.create_subprocess_exec(
        "nft", "list", "table", "inet", TABLE, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await asyncio.wait_for(proc.wait(), 30.0) == 0
