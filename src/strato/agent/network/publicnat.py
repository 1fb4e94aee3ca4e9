"""The virtual router's public side, inside its namespace: a veth to the host's public bridge holding
the network's public addresses and the default route, and two nftables tables applied as one
transaction (`nft -j -f -`), replaced whole each time so that applying the same spec twice changes
nothing:

- `ip strato_nat`: DNAT of port forwards and static NAT (prerouting), SNAT of the guest subnet to the
  source NAT address and of a static-NAT guest to its own address (postrouting); the same DNAT for
  guests calling a public address of their own network (hairpin NAT);
- `ip strato_filter`: traffic coming in on the public veth is dropped unless a firewall rule lets it in
  to a public address (or it belongs to a connection already allowed, or one the guests opened); an
  upstream router sending packets straight at the guest subnet gets nothing through either.
  Its chain runs before DNAT, so a rule names the public address and port the outside sees, as in
  CloudStack's virtual router. Its `egress` chain (forward hook) filters what guests send out through
  the public veth by the network's egress rules: with the default policy allow, a rule's traffic is
  dropped and the rest goes; with deny, only a rule's traffic goes. Packets of connections already
  made pass either way (replies to port forwards included), as CloudStack's router lets them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any

from strato.agent.drivers.roles import DriverError
from strato.agent.network.base import router_if_name, short_id
from strato.protocol.messages import EgressMatch, ErrorCode, PortForward, PublicAllow, PublicSpec

NAT_TABLE = "strato_nat"
FILTER_TABLE = "strato_filter"
NFT_TIMEOUT_S = 30.0

Expr = dict[str, Any]


def public_veth(network_id: str) -> str:
    """The public bridge's end of the router's public veth."""
    return f"sp-{short_id(network_id)}"


def public_if(network_id: str) -> str:
    """The router namespace's end: it holds the public addresses."""
    return f"su-{short_id(network_id)}"


def public_mac(network_id: str) -> str:
    """A fixed MAC for the public interface: a router made anew (holder restarted, public side taken away
    and given back) answers ARP as before, so the upstream's neighbour cache stays right."""
    h = short_id(network_id)
    return "02:53:" + ":".join(h[i : i + 2] for i in range(0, 8, 2))


def _match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _field(protocol: str, field: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": field}}


def _meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def _ports(start: int, end: int) -> Any:
    return start if start == end else {"range": [start, end]}


def _prefix(cidr: str) -> Any:
    net = ipaddress.IPv4Network(cidr, strict=False)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _allow(dev: str, rule: PublicAllow) -> list[Expr]:
    expr = [_match(_meta("iifname"), dev), _match(_field("ip", "daddr"), rule.public_ip)]
    expr.append(_match(_field("ip", "saddr"), {"set": [_prefix(c) for c in rule.cidrs]}))
    return [*expr, *_protocol(rule.protocol, rule.start_port, rule.end_port), {"accept": None}]


def _protocol(protocol: str, start: int | None, end: int | None) -> list[Expr]:
    """The protocol match of a rule, with its destination ports for tcp/udp ("all": no match)."""
    if protocol not in ("tcp", "udp", "icmp"):
        return []
    expr = [_match(_meta("l4proto"), protocol)]
    if protocol != "icmp" and start is not None:
        expr.append(_match(_field(protocol, "dport"), _ports(start, end or start)))
    return expr


def _egress(dev: str, rule: EgressMatch, verdict: str) -> list[Expr]:
    expr = [_match(_meta("oifname"), dev)]
    if rule.cidrs:
        expr.append(_match(_field("ip", "saddr"), {"set": [_prefix(c) for c in rule.cidrs]}))
    if rule.dest_cidrs:
        expr.append(_match(_field("ip", "daddr"), {"set": [_prefix(c) for c in rule.dest_cidrs]}))
    expr += _protocol(rule.protocol, rule.start_port, rule.end_port)
    if rule.protocol == "icmp":
        if rule.icmp_type is not None:
            expr.append(_match(_field("icmp", "type"), rule.icmp_type))
        if rule.icmp_code is not None:
            expr.append(_match(_field("icmp", "code"), rule.icmp_code))
    return [*expr, {verdict: None}]


def _forwards(dev: str, fwd: PortForward) -> list[list[Expr]]:
    """DNAT rules mapping each public port to its own private port. A NAT port range would pick any
    port of the range, so a shifted range becomes one rule per port; an unshifted one keeps its ports."""
    head = [_match(_meta("iifname"), dev), _match(_field("ip", "daddr"), fwd.public_ip),
            _match(_meta("l4proto"), fwd.protocol)]  # fmt: skip
    dport = _field(fwd.protocol, "dport")
    if fwd.public_start == fwd.private_start:
        return [[*head, _match(dport, _ports(fwd.public_start, fwd.public_end)), {"dnat": {"addr": fwd.private_ip}}]]
    shift = fwd.private_start - fwd.public_start
    return [
        [*head, _match(dport, port), {"dnat": {"addr": fwd.private_ip, "port": port + shift}}]
        for port in range(fwd.public_start, fwd.public_end + 1)
    ]


def _hairpin(inside: str, spec: PublicSpec) -> list[tuple[str, str, list[Expr]]]:
    """Guests reaching a public address of their own network: the same DNAT from the guest side, and the
    reply made to come back through the router (the source becomes the gateway; without it the target
    guest would answer the caller directly, from an address it never asked). As CloudStack's router,
    the public firewall is not on this path: it guards the public side."""
    rules = [(NAT_TABLE, "pre", expr) for f in spec.forwards for expr in _forwards(inside, f)]
    for nat in spec.static_nats:
        rules.append((NAT_TABLE, "pre", [_match(_meta("iifname"), inside), _match(_field("ip", "daddr"), nat.public_ip),
                                         {"dnat": {"addr": nat.private_ip}}]))  # fmt: skip
    dnatted = _match({"ct": {"key": "status"}}, "dnat", op="in")
    rules.append((NAT_TABLE, "post", [_match(_meta("oifname"), inside),
                                      _match(_field("ip", "saddr"), _prefix(spec.guest_cidr)), dnatted,
                                      {"masquerade": None}]))  # fmt: skip
    return rules


def ruleset(network_id: str, spec: PublicSpec) -> list[Expr]:
    """The whole transaction: both tables made anew (add + delete + add: idempotent, atomic)."""
    dev = public_if(network_id)
    out: list[Expr] = []
    rules: list[tuple[str, str, list[Expr]]] = []
    for table in (NAT_TABLE, FILTER_TABLE):
        out += [
            {"add": {"table": {"family": "ip", "name": table}}},
            {"delete": {"table": {"family": "ip", "name": table}}},
        ]
        out.append({"add": {"table": {"family": "ip", "name": table}}})
    chains = (
        (FILTER_TABLE, "guard", "filter", "prerouting", -150),
        (FILTER_TABLE, "egress", "filter", "forward", 0),
        (NAT_TABLE, "pre", "nat", "prerouting", -100),
        (NAT_TABLE, "post", "nat", "postrouting", 100),
    )
    for table, name, kind, hook, prio in chains:
        out.append({"add": {"chain": {"family": "ip", "table": table, "name": name, "type": kind, "hook": hook,
                                      "prio": prio, "policy": "accept"}}})  # fmt: skip
    incoming = _match(_meta("iifname"), dev)
    known = _match({"ct": {"key": "state"}}, ["established", "related"], op="in")
    rules.append((FILTER_TABLE, "guard", [incoming, known, {"accept": None}]))
    rules += [(FILTER_TABLE, "guard", _allow(dev, a)) for a in spec.allows]
    rules.append((FILTER_TABLE, "guard", [incoming, {"drop": None}]))  # also what is routed at the guests
    outgoing = _match(_meta("oifname"), dev)
    rules.append((FILTER_TABLE, "egress", [outgoing, known, {"accept": None}]))
    verdict = "drop" if spec.egress_default_allow else "accept"
    rules += [(FILTER_TABLE, "egress", _egress(dev, e, verdict)) for e in spec.egress]
    if not spec.egress_default_allow:
        rules.append((FILTER_TABLE, "egress", [outgoing, {"drop": None}]))
    rules += [(NAT_TABLE, "pre", expr) for f in spec.forwards for expr in _forwards(dev, f)]
    for nat in spec.static_nats:
        rules.append((NAT_TABLE, "pre", [incoming, _match(_field("ip", "daddr"), nat.public_ip),
                                         {"dnat": {"addr": nat.private_ip}}]))  # fmt: skip
        rules.append((NAT_TABLE, "post", [_match(_meta("oifname"), dev), _match(_field("ip", "saddr"), nat.private_ip),
                                          {"snat": {"addr": nat.public_ip}}]))  # fmt: skip
    rules.append((NAT_TABLE, "post", [_match(_meta("oifname"), dev),
                                      _match(_field("ip", "saddr"), _prefix(spec.guest_cidr)),
                                      {"snat": {"addr": spec.source_nat}}]))  # fmt: skip
    rules += _hairpin(router_if_name(network_id), spec)
    for table, chain, expr in rules:
        out.append({"add": {"rule": {"family": "ip", "table": table, "chain": chain, "expr": expr}}})
    return out


async def nft(batch: list[Expr], netns_pid: int) -> None:
    """One `nft -j -f -` transaction inside the router namespace."""
    proc = await asyncio.create_subprocess_exec(
        "nsenter", "-t", str(netns_pid), "-n", "nft", "-j", "-f", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(json.dumps({"nftables": batch}).encode()), NFT_TIMEOUT_S)
    if proc.returncode != 0:
        raise DriverError(ErrorCode.INTERNAL, f"nft in the router namespace: {err.decode().strip()}")


async def remove_tables(netns_pid: int) -> None:
    """The router's NAT and filter tables gone (a network that lost its public side)."""
    batch: list[Expr] = []
    for table in (NAT_TABLE, FILTER_TABLE):
        batch += [
            {"add": {"table": {"family": "ip", "name": table}}},
            {"delete": {"table": {"family": "ip", "name": table}}},
        ]
    await nft(batch, netns_pid)
