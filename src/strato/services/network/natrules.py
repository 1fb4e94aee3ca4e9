"""Rules on public addresses, checked before anything is made: port forwards (createPortForwardingRule)
to a VM's NIC on the address's network, and firewall rules (createFirewallRule) saying what may come in;
nothing comes in to a public address without one, as with CloudStack's virtual router. A port forward
made with openfirewall brings its own firewall rule for its public ports from anywhere."""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Nic, PortForwardingRule, PublicFirewallRule, PublicIpAddress
from strato.errors import InvalidParameter, NotFound
from strato.services.core.access import get_owned, get_vm, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.network.ports import port_range
from strato.services.network.publicips import LIVE_RULE_STATES, get_address

FORWARD_PROTOCOLS = ("tcp", "udp")
FIREWALL_PROTOCOLS = ("tcp", "udp", "icmp", "all")
MAX_SHIFTED_PORTS = 256
"""A range forwarded to other port numbers is one router rule per port (NAT ranges do not map 1:1)."""


def _usable_ip(ctx: CallContext, ip_id: str) -> PublicIpAddress:
    try:
        ip = get_address(ctx, ip_id, "ipaddressid")
    except NotFound:
        raise InvalidParameter(f"Unable to find public IP address with ipaddressid={ip_id}") from None
    if ip.state != "Allocated":
        raise InvalidParameter(f"Public IP address {ip.address} (ipaddressid) is {ip.state}, not Allocated")
    return ip


def _live_forwards(session: Session, ip_id: str) -> list[PortForwardingRule]:
    q = select(PortForwardingRule).where(
        PortForwardingRule.ip_address_id == ip_id, PortForwardingRule.state.in_(LIVE_RULE_STATES)
    )
    return list(session.scalars(q))


def create_port_forward(ctx: CallContext, args: dict[str, Any]) -> PortForwardingRule:
    ip = _usable_ip(ctx, args["ipaddressid"])
    protocol = str(args["protocol"]).lower()
    if protocol not in FORWARD_PROTOCOLS:
        raise InvalidParameter(f"Parameter protocol must be tcp or udp, not {args['protocol']!r}")
    pub = port_range(args, "publicport", "publicendport")
    priv = port_range(args, "privateport", "privateendport")
    if pub[1] - pub[0] != priv[1] - priv[0]:
        raise InvalidParameter("Parameters publicport/publicendport and privateport/privateendport differ in length")
    if pub[0] != priv[0] and pub[1] - pub[0] >= MAX_SHIFTED_PORTS:
        raise InvalidParameter(
            f"Parameter privateport: a range mapped to other ports may hold at most {MAX_SHIFTED_PORTS} ports "
            "(the same ports on both sides have no limit)"
        )
    if ip.static_nat_vm_id is not None:
        raise InvalidParameter(f"Public IP address {ip.address} (ipaddressid) has static NAT: no port forward on it")
    for other in _live_forwards(ctx.session, ip.id):
        if other.protocol == protocol and pub[0] <= other.public_end and other.public_start <= pub[1]:
            raise InvalidParameter(
                f"Parameter publicport: {protocol} {pub[0]}-{pub[1]} of {ip.address} overlaps the rule "
                f"{other.public_start}-{other.public_end} ({other.id})"
            )
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    nic = ctx.session.scalar(select(Nic).where(Nic.vm_id == vm.id, Nic.network_id == ip.network_id))
    if nic is None:
        raise InvalidParameter(f"VM {vm.name} (virtualmachineid) has no NIC on the network of {ip.address}")
    if args.get("vmguestip") and args["vmguestip"] != nic.ip_address:
        raise InvalidParameter(f"Parameter vmguestip {args['vmguestip']} is not the address of VM {vm.name}'s NIC")
    rule = PortForwardingRule(
        ip_address_id=ip.id,
        network_id=ip.network_id,
        account_id=ip.account_id,
        protocol=protocol,
        public_start=pub[0],
        public_end=pub[1],
        private_start=priv[0],
        private_end=priv[1],
        vm_id=vm.id,
        vm_ip=nic.ip_address,
    )
    ctx.session.add(rule)
    ctx.session.flush()
    if args.get("openfirewall") is not False:
        opened = PublicFirewallRule(ip_address_id=ip.id, network_id=ip.network_id, account_id=ip.account_id,
                                    protocol=protocol, start_port=pub[0], end_port=pub[1], cidrs=["0.0.0.0/0"],
                                    forward_id=rule.id)  # fmt: skip
        ctx.session.add(opened)
        ctx.session.flush()
    return rule


def _cidrs(value: Any) -> list[str]:
    items = value if isinstance(value, list) else str(value or "0.0.0.0/0").split(",")
    out = []
    for item in (str(i).strip() for i in items):
        try:
            out.append(str(ipaddress.IPv4Network(item, strict=False)))
        except ValueError:
            raise InvalidParameter(f"Parameter cidrlist: {item!r} is not an IPv4 CIDR") from None
    return out or ["0.0.0.0/0"]


def create_firewall_rule(ctx: CallContext, args: dict[str, Any]) -> PublicFirewallRule:
    ip = _usable_ip(ctx, args["ipaddressid"])
    protocol = str(args["protocol"]).lower()
    if protocol not in FIREWALL_PROTOCOLS:
        raise InvalidParameter(
            f"Parameter protocol must be one of {', '.join(FIREWALL_PROTOCOLS)}, not {args['protocol']!r}"
        )
    start = end = None
    if protocol in ("tcp", "udp"):
        if args.get("startport") in (None, ""):
            raise InvalidParameter(f"Parameter startport is required for protocol {protocol}")
        start, end = port_range(args, "startport", "endport")
    elif args.get("startport") not in (None, "") or args.get("endport") not in (None, ""):
        raise InvalidParameter(f"Parameters startport/endport are for tcp and udp, not {protocol}")
    rule = PublicFirewallRule(ip_address_id=ip.id, network_id=ip.network_id, account_id=ip.account_id,
                              protocol=protocol, start_port=start, end_port=end,
                              cidrs=_cidrs(args.get("cidrlist")))  # fmt: skip
    ctx.session.add(rule)
    ctx.session.flush()
    return rule


def get_port_forward(ctx: CallContext, rule_id: str) -> PortForwardingRule:
    row: PortForwardingRule = get_owned(ctx, PortForwardingRule, rule_id, "port forwarding rule")
    return row


def get_firewall_rule(ctx: CallContext, rule_id: str) -> PublicFirewallRule:
    row: PublicFirewallRule = get_owned(ctx, PublicFirewallRule, rule_id, "firewall rule")
    if row.forward_id is not None:
        raise InvalidParameter(f"Firewall rule {rule_id} (id) belongs to port forwarding rule {row.forward_id}: "
                               "delete that rule instead")  # fmt: skip
    return row


def _list(ctx: CallContext, model: Any, args: dict[str, Any], page: Page) -> tuple[list[Any], int]:
    q = select(model).where(model.removed.is_(None))
    if not ctx.is_admin or not args.get("listall") or args.get("account") or args.get("domainid"):
        q = q.where(owner_scope(ctx, args).condition(model.account_id))
    for param, column in (("id", model.id), ("ipaddressid", model.ip_address_id), ("networkid", model.network_id)):
        if args.get(param):
            q = q.where(column == args[param])
    return run_page(ctx.session, q, page, (), (model.created, model.id))


def list_port_forwards(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[PortForwardingRule], int]:
    return _list(ctx, PortForwardingRule, args, page)


def list_firewall_rules(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[PublicFirewallRule], int]:
    return _list(ctx, PublicFirewallRule, args, page)


def forget_vm_rules(session: Session, vm_id: str) -> None:
    """A VM being expunged loses its port forwards (and the firewall rules they opened) and its static
    NAT: its address is
    free for another VM. The router drops them with the next wanted state its network sends."""
    for rule in list(session.scalars(select(PortForwardingRule).where(PortForwardingRule.vm_id == vm_id))):
        for fw in list(session.scalars(select(PublicFirewallRule).where(PublicFirewallRule.forward_id == rule.id))):
            session.delete(fw)
        session.flush()
        session.delete(rule)
    for ip in list(session.scalars(select(PublicIpAddress).where(PublicIpAddress.static_nat_vm_id == vm_id))):
        ip.static_nat_vm_id = ip.static_nat_ip = None
    session.flush()


def enable_static_nat(ctx: CallContext, args: dict[str, Any]) -> PublicIpAddress:
    """enableStaticNat's rules and change (the caller sends the network's new state to its hosts)."""
    ip = _usable_ip(ctx, args["ipaddressid"])
    if ip.source_nat:
        raise InvalidParameter(f"Public IP address {ip.address} (ipaddressid) is its network's source NAT address")
    if ip.static_nat_vm_id is not None:
        raise InvalidParameter(f"Public IP address {ip.address} (ipaddressid) already has static NAT")
    if _live_forwards(ctx.session, ip.id):
        raise InvalidParameter(f"Public IP address {ip.address} (ipaddressid) has port forwarding rules")
    if args.get("networkid") and args["networkid"] != ip.network_id:
        raise InvalidParameter(f"Parameter networkid is not the network of {ip.address}")
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    nic = ctx.session.scalar(select(Nic).where(Nic.vm_id == vm.id, Nic.network_id == ip.network_id))
    if nic is None:
        raise InvalidParameter(f"VM {vm.name} (virtualmachineid) has no NIC on the network of {ip.address}")
    if args.get("vmguestip") and args["vmguestip"] != nic.ip_address:
        raise InvalidParameter(f"Parameter vmguestip {args['vmguestip']} is not the address of VM {vm.name}'s NIC")
    taken = ctx.session.scalar(
        select(PublicIpAddress.address).where(
            PublicIpAddress.static_nat_vm_id == vm.id, PublicIpAddress.network_id == ip.network_id
        )
    )
    if taken is not None:
        raise InvalidParameter(f"VM {vm.name} (virtualmachineid) already has static NAT on {taken}")
    ip.static_nat_vm_id, ip.static_nat_ip = vm.id, nic.ip_address
    ctx.session.flush()
    return ip
