"""Egress firewall rules of isolated networks (createEgressFirewallRule): what guests may send out through
the virtual router's public side. Their meaning follows the network offering's egress default policy, as
in CloudStack: with allow (the default offerings), a rule blocks its traffic; with deny, a rule is the
only traffic let out. Rows are made in the request and reach the router by the public-rule jobs
(rule_jobs.py), as port forwards and firewall rules do."""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import EgressRule, Network
from strato.errors import InvalidParameter
from strato.protocol.messages import EgressMatch
from strato.services.core.access import get_owned, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.network import offerings
from strato.services.network.ports import port_range

PROTOCOLS = ("tcp", "udp", "icmp", "all")
LIVE_STATES = ("Add", "Active")


def _cidr_list(value: Any, param: str) -> list[str]:
    if value in (None, "", []):
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    out: list[str] = []
    for item in (str(i).strip() for i in items):
        try:
            out.append(str(ipaddress.IPv4Network(item, strict=False)))
        except ValueError:
            raise InvalidParameter(f"Parameter {param}: {item!r} is not an IPv4 CIDR") from None
    return out


def _icmp(value: Any, param: str) -> int | None:
    if value in (None, ""):
        return None
    code = int(value)
    if code == -1:
        return None  # CloudStack's "any"
    if not 0 <= code <= 255:
        raise InvalidParameter(f"Parameter {param} {code} is not an ICMP {param[4:]} (0-255, or -1 for any)")
    return code


def _network(ctx: CallContext, network_id: str) -> Network:
    network: Network = get_owned(ctx, Network, network_id, "network", "networkid")
    offering = offerings.find(ctx.session, network.network_offering_id)
    if network.guest_type != "Isolated" or offering is None or "Firewall" not in offering.services:
        raise InvalidParameter(
            f"Parameter networkid: network {network.name} has no Firewall service (egress rules are for isolated "
            "networks whose offering has it)"
        )
    return network


def create_rule(ctx: CallContext, args: dict[str, Any]) -> EgressRule:
    network = _network(ctx, args["networkid"])
    protocol = str(args["protocol"]).lower()
    if protocol not in PROTOCOLS:
        raise InvalidParameter(f"Parameter protocol must be one of {', '.join(PROTOCOLS)}, not {args['protocol']!r}")
    start = end = None
    has_ports = args.get("startport") not in (None, "") or args.get("endport") not in (None, "")
    if protocol in ("tcp", "udp") and has_ports:
        start, end = port_range(args, "startport", "endport")
    elif has_ports:
        raise InvalidParameter(f"Parameters startport/endport are for tcp and udp, not {protocol}")
    icmp_type, icmp_code = _icmp(args.get("icmptype"), "icmptype"), _icmp(args.get("icmpcode"), "icmpcode")
    if protocol != "icmp" and (icmp_type is not None or icmp_code is not None):
        raise InvalidParameter(f"Parameters icmptype/icmpcode are for icmp, not {protocol}")
    guest = ipaddress.IPv4Network(network.cidr)
    cidrs = _cidr_list(args.get("cidrlist"), "cidrlist")
    for cidr in cidrs:
        if not ipaddress.IPv4Network(cidr).subnet_of(guest):
            raise InvalidParameter(f"Parameter cidrlist: {cidr} is not inside network {network.name}'s {guest}")
    rule = EgressRule(network_id=network.id, account_id=network.account_id, protocol=protocol, start_port=start,
                      end_port=end, icmp_type=icmp_type, icmp_code=icmp_code, cidrs=cidrs,
                      dest_cidrs=_cidr_list(args.get("destcidrlist"), "destcidrlist"))  # fmt: skip
    ctx.session.add(rule)
    ctx.session.flush()
    return rule


def get_rule(ctx: CallContext, rule_id: str) -> EgressRule:
    row: EgressRule = get_owned(ctx, EgressRule, rule_id, "egress firewall rule")
    return row


def list_rules(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[EgressRule], int]:
    q = select(EgressRule).where(EgressRule.removed.is_(None))
    if not ctx.is_admin or not args.get("listall") or args.get("account") or args.get("domainid"):
        q = q.where(owner_scope(ctx, args).condition(EgressRule.account_id))
    for param, column in (("id", EgressRule.id), ("networkid", EgressRule.network_id)):
        if args.get(param):
            q = q.where(column == args[param])
    return run_page(ctx.session, q, page, (), (EgressRule.created, EgressRule.id))


def egress_of(session: Session, network: Network) -> tuple[bool, list[EgressMatch]]:
    """The router's view: the offering's default policy and the network's live rules, oldest first."""
    offering = offerings.find(session, network.network_offering_id)
    rows = session.scalars(
        select(EgressRule)
        .where(EgressRule.network_id == network.id, EgressRule.state.in_(LIVE_STATES))
        .order_by(EgressRule.created, EgressRule.id)
    )
    rules = [
        EgressMatch(
            protocol=r.protocol,
            start_port=r.start_port,
            end_port=r.end_port,
            icmp_type=r.icmp_type,
            icmp_code=r.icmp_code,
            cidrs=list(r.cidrs),
            dest_cidrs=list(r.dest_cidrs),
        )
        for r in rows
    ]
    return (offering.egress_default_allow if offering is not None else True), rules


def forget_network_rules(session: Session, network_id: str) -> None:
    """A network being deleted takes its egress rules with it."""
    for row in list(session.scalars(select(EgressRule).where(EgressRule.network_id == network_id))):
        session.delete(row)
    session.flush()
