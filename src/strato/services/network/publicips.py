"""Public addresses: the zone's public ranges (createVlanIpRange), the addresses isolated networks take
from them (the source NAT one when the network is implemented, more by associateIpAddress), and the
public side of a network's router as the agent gets it (PublicSpec)."""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from strato.db.models import (
    Account,
    Network,
    Nic,
    PhysicalNetwork,
    PortForwardingRule,
    PublicFirewallRule,
    PublicIpAddress,
    PublicIpRange,
    Zone,
)
from strato.errors import InsufficientCapacity, InvalidParameter, ResourceInUse
from strato.protocol.messages import PortForward, PublicAllow, PublicSpec, StaticNat
from strato.services.core import limits, usage
from strato.services.core.access import get_owned, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live
from strato.services.network import egress, offerings

DEFAULT_PUBLIC_LABEL = "cloudbr0"
"""The host bridge of public traffic when the Public traffic type names none (CloudStack's KVM default)."""
LIVE_RULE_STATES = ("Add", "Active")
"""Rules the router carries (or is about to); Revoke ones are leaving it."""


def _addr(value: str, param: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidParameter(f"Parameter {param} must be an IPv4 address, not {value!r}") from None


def _public_physical_network(session: Session, zone: Zone, pn_id: str | None) -> PhysicalNetwork:
    if pn_id:
        pn = get_live(session, PhysicalNetwork, pn_id, "physical network", "physicalnetworkid")
        if pn.zone_id != zone.id:
            raise InvalidParameter(f"Physical network {pn.name} (physicalnetworkid) is not in zone {zone.name}")
        return pn
    rows = list(
        session.scalars(
            select(PhysicalNetwork)
            .where(PhysicalNetwork.zone_id == zone.id, PhysicalNetwork.removed.is_(None))
            .order_by(PhysicalNetwork.created)
        )
    )
    public = [p for p in rows if any(t["traffictype"] == "Public" for t in p.traffic_types)]
    if not public:
        raise InvalidParameter(
            f"Zone {zone.name} has no physical network with Public traffic: give physicalnetworkid or addTrafficType"
        )
    return public[0]


def _vlan(value: str | None) -> str:
    text = (value or "untagged").strip().lower().removeprefix("vlan://")
    if text != "untagged":
        raise InvalidParameter(
            f"Parameter vlan {value!r}: only untagged public ranges are supported (tagged ones need 802.1Q)"
        )
    return "untagged"


def create_range(ctx: CallContext, args: dict[str, Any]) -> PublicIpRange:
    """createVlanIpRange: a public range of a zone for isolated networks; everything checked first."""
    if args.get("forvirtualnetwork") is False:
        raise InvalidParameter("Parameter forvirtualnetwork: only public ranges (forvirtualnetwork=true) are supported")
    if not args.get("zoneid"):
        raise InvalidParameter("Parameter zoneid is required")
    zone = get_live(ctx.session, Zone, args["zoneid"], "zone", "zoneid")
    pn = _public_physical_network(ctx.session, zone, args.get("physicalnetworkid"))
    for param in ("gateway", "netmask", "startip"):
        if not args.get(param):
            raise InvalidParameter(f"Parameter {param} is required")
    gateway = _addr(args["gateway"], "gateway")
    try:
        net = ipaddress.IPv4Network(f"{gateway}/{args['netmask']}", strict=False)
    except ValueError:
        raise InvalidParameter(f"Parameter netmask {args['netmask']!r} is not a valid netmask") from None
    if net.prefixlen > 30:
        raise InvalidParameter(f"Parameter netmask {args['netmask']}: a public range needs at least a /30")
    start = _addr(args["startip"], "startip")
    end = _addr(args["endip"], "endip") if args.get("endip") else start
    for value, param in ((start, "startip"), (end, "endip")):
        if value not in net or value in (net.network_address, net.broadcast_address):
            raise InvalidParameter(f"Parameter {param} {value} is outside the gateway's network {net}")
    if start > end:
        raise InvalidParameter(f"Parameter startip {start} is after endip {end}")
    if start <= gateway <= end:
        raise InvalidParameter(f"Parameter gateway {gateway} is inside the range {start}-{end}")
    vlan = _vlan(args.get("vlan"))
    for other in ctx.session.scalars(
        select(PublicIpRange).where(PublicIpRange.zone_id == zone.id, PublicIpRange.removed.is_(None))
    ):
        lo, hi = ipaddress.IPv4Address(other.start_ip), ipaddress.IPv4Address(other.end_ip)
        if start <= hi and lo <= end:
            raise InvalidParameter(f"Parameters startip/endip: {start}-{end} overlaps the zone's range {lo}-{hi}")
    for guest in ctx.session.scalars(select(Network).where(Network.zone_id == zone.id, Network.removed.is_(None))):
        if ipaddress.IPv4Network(guest.cidr).overlaps(net):
            raise InvalidParameter(f"Parameters gateway/netmask: {net} overlaps guest network {guest.name}")
    row = PublicIpRange(
        zone_id=zone.id,
        physical_network_id=pn.id,
        gateway=str(gateway),
        netmask=str(net.netmask),
        start_ip=str(start),
        end_ip=str(end),
        vlan=vlan,
        for_virtual_network=True,
    )
    ctx.session.add(row)
    ctx.session.flush()
    return row


def public_overlap(session: Session, zone_id: str, net: ipaddress.IPv4Network) -> None:
    """431 when a guest network's range would overlap a public range of its zone."""
    for r in session.scalars(
        select(PublicIpRange).where(PublicIpRange.zone_id == zone_id, PublicIpRange.removed.is_(None))
    ):
        public = ipaddress.IPv4Network(f"{r.gateway}/{r.netmask}", strict=False)
        if public.overlaps(net):
            raise InvalidParameter(f"Parameters gateway/netmask: {net} overlaps the zone's public range {public}")


def list_ranges(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[PublicIpRange], int]:
    q = select(PublicIpRange).where(PublicIpRange.removed.is_(None))
    for param, column in (("id", PublicIpRange.id), ("zoneid", PublicIpRange.zone_id),
                          ("physicalnetworkid", PublicIpRange.physical_network_id)):  # fmt: skip
        if args.get(param):
            q = q.where(column == args[param])
    if args.get("forvirtualnetwork") is False:
        q = q.where(PublicIpRange.for_virtual_network.is_(False))
    return run_page(ctx.session, q, page, (), (PublicIpRange.created, PublicIpRange.id))


def used_in_range(session: Session, range_id: str) -> int:
    return len(list(session.scalars(select(PublicIpAddress.id).where(PublicIpAddress.range_id == range_id))))


def delete_range(ctx: CallContext, range_id: str) -> None:
    from strato.db.base import utcnow

    row = get_live(ctx.session, PublicIpRange, range_id, "public IP range", "id")
    used = used_in_range(ctx.session, row.id)
    if used:
        raise ResourceInUse(
            f"Public IP range {row.start_ip}-{row.end_ip} has {used} address(es) in use: release them first"
        )
    row.removed = utcnow()


# --- addresses -----------------------------------------------------------------------------------------


def has_source_nat(session: Session, network: Network) -> bool:
    offering = offerings.find(session, network.network_offering_id)
    return offering is not None and "SourceNat" in offering.services and network.guest_type == "Isolated"


def network_addresses(session: Session, network_id: str) -> list[PublicIpAddress]:
    return list(
        session.scalars(
            select(PublicIpAddress)
            .where(PublicIpAddress.network_id == network_id)
            .order_by(PublicIpAddress.source_nat.desc(), PublicIpAddress.created, PublicIpAddress.id)
        )
    )


def zone_has_public_range(session: Session, zone_id: str) -> bool:
    q = select(PublicIpRange.id).where(PublicIpRange.zone_id == zone_id, PublicIpRange.removed.is_(None)).limit(1)
    return session.scalar(q) is not None


def allocate(session: Session, network: Network, source_nat: bool) -> PublicIpAddress:
    """The first free address of the zone's public ranges, for `network` (and its owner)."""
    ranges = list(
        session.scalars(
            select(PublicIpRange)
            .where(PublicIpRange.zone_id == network.zone_id, PublicIpRange.removed.is_(None))
            .order_by(PublicIpRange.created, PublicIpRange.id)
        )
    )
    used = set(session.scalars(select(PublicIpAddress.address).where(PublicIpAddress.zone_id == network.zone_id)))
    for r in ranges:
        addr, end = ipaddress.IPv4Address(r.start_ip), ipaddress.IPv4Address(r.end_ip)
        while addr <= end:
            if str(addr) not in used:
                row = PublicIpAddress(
                    range_id=r.id,
                    zone_id=network.zone_id,
                    address=str(addr),
                    network_id=network.id,
                    account_id=network.account_id,
                    domain_id=network.domain_id,
                    source_nat=source_nat,
                )
                try:
                    with session.begin_nested():  # another server may have taken it meanwhile
                        session.add(row)
                        session.flush()
                except IntegrityError:
                    addr += 1
                    continue
                _usage(session, row, usage.IP_ADDRESS.start_event)
                return row
            addr += 1
    raise InsufficientCapacity("Insufficient public IP address capacity: the zone's public ranges are used up")


def associate(session: Session, network: Network) -> PublicIpAddress:
    """associateIpAddress: one more address for the network, within its owner's public_ip limit (532)."""
    owner = session.get(Account, network.account_id)
    if owner is not None:
        limits.check(session, owner, public_ips=1)
    return allocate(session, network, source_nat=False)


def ensure_source_nat(session: Session, network: Network) -> PublicIpAddress | None:
    """The network's source NAT address, taken now if it has none and its zone has a public range (a zone
    without one runs its isolated networks without a public side, as before public ranges existed)."""
    if not has_source_nat(session, network):
        return None
    found = next((a for a in network_addresses(session, network.id) if a.source_nat), None)
    if found is not None or not zone_has_public_range(session, network.zone_id):
        return found
    return allocate(session, network, source_nat=True)


def get_address(ctx: CallContext, ip_id: str, param: str = "id") -> PublicIpAddress:
    row: PublicIpAddress = get_owned(ctx, PublicIpAddress, ip_id, "public IP address", param)
    return row


def list_addresses(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[PublicIpAddress], int]:
    q = select(PublicIpAddress).where(PublicIpAddress.removed.is_(None))
    if not ctx.is_admin or not args.get("listall") or args.get("account") or args.get("domainid"):
        q = q.where(owner_scope(ctx, args).condition(PublicIpAddress.account_id))
    for param, column in (("id", PublicIpAddress.id), ("zoneid", PublicIpAddress.zone_id),
                          ("associatednetworkid", PublicIpAddress.network_id),
                          ("ipaddress", PublicIpAddress.address), ("vlanid", PublicIpAddress.range_id)):  # fmt: skip
        if args.get(param):
            q = q.where(column == args[param])
    if args.get("issourcenat") is not None:
        q = q.where(PublicIpAddress.source_nat.is_(bool(args["issourcenat"])))
    if args.get("isstaticnat") is not None:
        cond = PublicIpAddress.static_nat_vm_id.is_not(None)
        q = q.where(cond if args["isstaticnat"] else ~cond)
    return run_page(ctx.session, q, page, (), (PublicIpAddress.created, PublicIpAddress.id))


def release(session: Session, ip: PublicIpAddress) -> None:
    """The address and every rule on it gone (its network's router is told by the caller's job)."""
    for fw in list(session.scalars(select(PublicFirewallRule).where(PublicFirewallRule.ip_address_id == ip.id))):
        session.delete(fw)
    session.flush()
    for pf in list(session.scalars(select(PortForwardingRule).where(PortForwardingRule.ip_address_id == ip.id))):
        session.delete(pf)
    session.flush()
    _usage(session, ip, usage.IP_ADDRESS.end_event)
    session.delete(ip)
    session.flush()


def _usage(session: Session, ip: PublicIpAddress, event: str) -> None:
    """Public IP usage (CloudStack's type 3): billed from the address's allocation to its release."""
    usage.record(session, event, account_id=ip.account_id, domain_id=ip.domain_id, resource_id=ip.id,
                 name=ip.address, zone_id=ip.zone_id)  # fmt: skip


# --- what the router's host gets -----------------------------------------------------------------------


def public_label(session: Session, range_row: PublicIpRange) -> str:
    pn = session.get(PhysicalNetwork, range_row.physical_network_id)
    for entry in pn.traffic_types if pn is not None else []:
        if entry.get("traffictype") == "Public" and entry.get("kvmnetworklabel"):
            return str(entry["kvmnetworklabel"])
    return DEFAULT_PUBLIC_LABEL


def public_spec(session: Session, network: Network) -> PublicSpec | None:
    """The router's public side: None while the network has no source NAT address."""
    addresses = [a for a in network_addresses(session, network.id) if a.state == "Allocated"]
    snat = next((a for a in addresses if a.source_nat), None)
    if snat is None:
        return None
    r = session.get(PublicIpRange, snat.range_id)
    assert r is not None
    by_id = {a.id: a for a in addresses}
    nic_rows = session.execute(select(Nic.vm_id, Nic.ip_address).where(Nic.network_id == network.id))
    live_nics = {(vm_id, ip) for vm_id, ip in nic_rows}
    forwards = [
        PortForward(
            public_ip=by_id[f.ip_address_id].address,
            protocol=f.protocol,
            public_start=f.public_start,
            public_end=f.public_end,
            private_ip=f.vm_ip,
            private_start=f.private_start,
            private_end=f.private_end,
        )
        for f in session.scalars(
            select(PortForwardingRule)
            .where(PortForwardingRule.network_id == network.id, PortForwardingRule.state.in_(LIVE_RULE_STATES))
            .order_by(PortForwardingRule.created, PortForwardingRule.id)
        )
        if f.ip_address_id in by_id and (f.vm_id, f.vm_ip) in live_nics
    ]
    allows = [
        PublicAllow(
            public_ip=by_id[w.ip_address_id].address,
            protocol=w.protocol,
            start_port=w.start_port,
            end_port=w.end_port,
            cidrs=list(w.cidrs) or ["0.0.0.0/0"],
        )
        for w in session.scalars(
            select(PublicFirewallRule)
            .where(PublicFirewallRule.network_id == network.id, PublicFirewallRule.state.in_(LIVE_RULE_STATES))
            .order_by(PublicFirewallRule.created, PublicFirewallRule.id)
        )
        if w.ip_address_id in by_id
    ]
    statics = [StaticNat(public_ip=a.address, private_ip=a.static_nat_ip) for a in addresses if a.static_nat_ip]
    net = ipaddress.IPv4Network(f"{r.gateway}/{r.netmask}", strict=False)
    egress_allow, egress_rules = egress.egress_of(session, network)
    return PublicSpec(
        bridge=public_label(session, r),
        gateway=r.gateway,
        prefix=net.prefixlen,
        source_nat=snat.address,
        addresses=[a.address for a in addresses],
        guest_cidr=network.cidr,
        forwards=forwards,
        static_nats=statics,
        allows=allows,
        egress_default_allow=egress_allow,
        egress=egress_rules,
    )
