"""Public IP ranges, public addresses of isolated networks, port forwarding and firewall rules.

createVlanIpRange and deleteVlanIpRange are synchronous (as in CloudStack); the address and rule
commands are async, and their jobs send the network's new wanted state to its router's host."""

from __future__ import annotations

from typing import Any

from strato.api import views_publicips as v
from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import Param, T
from strato.api.registry import ADMIN, Kind, api
from strato.db.models import Network
from strato.errors import InvalidParameter, NotFound
from strato.services.core import jobs
from strato.services.core.context import CallContext
from strato.services.core.listing import Page
from strato.services.network import egress, natrules, networks, nics, publicips
from strato.services.network.rule_jobs import (
    ApplyPublicRule,
    DisableStaticNat,
    RevokePublicRule,
    RuleParams,
    StaticNatParams,
)


def _apply(ctx: CallContext, cmd: str, network_id: str, kind: str, object_id: str, instance: str) -> AsyncStarted:
    params = RuleParams(network_id=network_id, kind=kind, object_id=object_id)
    return AsyncStarted(jobs.submit_operation(ctx, ApplyPublicRule, params, instance, object_id, cmd=cmd), object_id)


def _revoke(ctx: CallContext, cmd: str, network_id: str, kind: str, object_id: str, instance: str) -> AsyncStarted:
    params = RuleParams(network_id=network_id, kind=kind, object_id=object_id)
    return AsyncStarted(jobs.submit_operation(ctx, RevokePublicRule, params, instance, object_id, cmd=cmd))


@api(
    "createVlanIpRange",
    "Creates a range of public IP addresses for the zone's isolated networks",
    response="vlan",
    access=ADMIN,
    event="VLAN.IP.RANGE.CREATE",
    params=(
        Param("zoneid", T.UUID, "The zone of the range"),
        Param("podid", T.UUID, "Accepted; public ranges are zone-wide"),
        Param("physicalnetworkid", T.UUID, "The physical network (default: the zone's one with Public traffic)"),
        Param("forvirtualnetwork", T.BOOLEAN, "true: public addresses for isolated networks (the only kind here)"),
        Param("gateway", T.STRING, "The gateway of the range", max_length=64),
        Param("netmask", T.STRING, "The netmask of the range", max_length=64),
        Param("startip", T.STRING, "The first address of the range", max_length=64),
        Param("endip", T.STRING, "The last address of the range (default: startip)", max_length=64),
        Param("vlan", T.STRING, "untagged (tagged public ranges are not supported)", max_length=64),
    ),
)
def create_vlan_ip_range(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return v.ip_range(ctx.session, publicips.create_range(ctx, args))


@api(
    "listVlanIpRanges",
    "Lists public IP ranges",
    kind=Kind.LIST,
    response="vlaniprange",
    access=ADMIN,
    params=(
        Param("id", T.UUID, "The ID of the range"),
        Param("zoneid", T.UUID, "The zone of the ranges"),
        Param("physicalnetworkid", T.UUID, "The physical network of the ranges"),
        Param("forvirtualnetwork", T.BOOLEAN, "true: public ranges"),
    ),
)
def list_vlan_ip_ranges(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = publicips.list_ranges(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda r: v.ip_range(ctx.session, r)), total)


@api(
    "deleteVlanIpRange",
    "Deletes a public IP range (refused while one of its addresses is in use)",
    kind=Kind.SUCCESS,
    access=ADMIN,
    event="VLAN.IP.RANGE.DELETE",
    params=(Param("id", T.UUID, "The ID of the range", required=True),),
)
def delete_vlan_ip_range(ctx: CallContext, args: dict[str, Any]) -> None:
    publicips.delete_range(ctx, args["id"])


@api(
    "listPublicIpAddresses",
    "Lists the public addresses of networks",
    kind=Kind.LIST,
    response="publicipaddress",
    owned=True,
    params=(
        Param("id", T.UUID, "The ID of the address"),
        Param("zoneid", T.UUID, "The zone of the addresses"),
        Param("associatednetworkid", T.UUID, "The network the addresses belong to"),
        Param("ipaddress", T.STRING, "The address", max_length=64),
        Param("issourcenat", T.BOOLEAN, "Only source NAT addresses (or only others)"),
        Param("isstaticnat", T.BOOLEAN, "Only static NAT addresses (or only others)"),
        Param("vlanid", T.UUID, "The range of the addresses"),
        Param("allocatedonly", T.BOOLEAN, "Accepted; only addresses in use are listed"),
        Param("forvirtualnetwork", T.BOOLEAN, "Accepted; every address here is for isolated networks"),
    ),
)
def list_public_ips(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = publicips.list_addresses(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda r: v.public_ip(ctx.session, r)), total)


@api(
    "associateIpAddress",
    "Takes a public address from the zone's ranges for an isolated network",
    kind=Kind.ASYNC,
    event="NET.IPASSIGN",
    params=(
        Param("networkid", T.UUID, "The isolated network the address is for"),
        Param("zoneid", T.UUID, "Accepted with networkid (the network's zone)"),
    ),
)
def associate_ip(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    if not args.get("networkid"):
        raise InvalidParameter("Parameter networkid is required (an address belongs to an isolated network here)")
    try:
        network = networks.get_network(ctx, args["networkid"], "networkid")
    except NotFound:
        raise InvalidParameter(f"Unable to find network with networkid={args['networkid']}") from None
    if args.get("zoneid") and args["zoneid"] != network.zone_id:
        raise InvalidParameter(f"Parameter zoneid is not the zone of network {network.name}")
    if not publicips.has_source_nat(ctx.session, network):
        raise InvalidParameter(f"Network {network.name} (networkid) has no SourceNat service: no public address")
    ip = publicips.associate(ctx.session, network)
    return _apply(ctx, "associateIpAddress", network.id, "ipaddress", ip.id, "IpAddress")


@api(
    "disassociateIpAddress",
    "Releases a public address and every rule on it (not a network's source NAT address)",
    kind=Kind.ASYNC,
    event="NET.IPRELEASE",
    params=(Param("id", T.UUID, "The ID of the address", required=True),),
)
def disassociate_ip(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    ip = publicips.get_address(ctx, args["id"])
    if ip.source_nat:
        raise InvalidParameter(f"Public IP address {ip.address} (id) is its network's source NAT address")
    if ip.state != "Allocated":
        raise InvalidParameter(f"Public IP address {ip.address} (id) is {ip.state}")
    return _revoke(ctx, "disassociateIpAddress", ip.network_id, "ipaddress", ip.id, "IpAddress")


@api(
    "createPortForwardingRule",
    "Forwards ports of a public address to a VM of its network",
    kind=Kind.ASYNC,
    event="NET.RULEADD",
    params=(
        Param("ipaddressid", T.UUID, "The public address", required=True),
        Param("protocol", T.STRING, "tcp or udp", required=True, max_length=8),
        Param("publicport", T.INTEGER, "The first public port", required=True),
        Param("publicendport", T.INTEGER, "The last public port (default: publicport)"),
        Param("privateport", T.INTEGER, "The first port of the VM", required=True),
        Param("privateendport", T.INTEGER, "The last port of the VM (default: privateport)"),
        Param("virtualmachineid", T.UUID, "The VM", required=True),
        Param("vmguestip", T.STRING, "The VM's address on the network (its NIC's)", max_length=64),
        Param("networkid", T.UUID, "Accepted: the address's network"),
        Param("openfirewall", T.BOOLEAN, "true (default): a firewall rule opens the public ports from anywhere"),
    ),
)
def create_port_forward(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    rule = natrules.create_port_forward(ctx, args)
    return _apply(ctx, "createPortForwardingRule", rule.network_id, "portforwardingrule", rule.id, "FirewallRule")


@api(
    "listPortForwardingRules",
    "Lists port forwarding rules",
    kind=Kind.LIST,
    response="portforwardingrule",
    owned=True,
    params=(
        Param("id", T.UUID, "The ID of the rule"),
        Param("ipaddressid", T.UUID, "The public address of the rules"),
        Param("networkid", T.UUID, "The network of the rules"),
    ),
)
def list_port_forwards(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = natrules.list_port_forwards(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda r: v.port_forward(ctx.session, r)), total)


@api(
    "deletePortForwardingRule",
    "Deletes a port forwarding rule (and the firewall rule it opened)",
    kind=Kind.ASYNC,
    event="NET.RULEDELETE",
    params=(Param("id", T.UUID, "The ID of the rule", required=True),),
)
def delete_port_forward(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    rule = natrules.get_port_forward(ctx, args["id"])
    return _revoke(ctx, "deletePortForwardingRule", rule.network_id, "portforwardingrule", rule.id, "FirewallRule")


@api(
    "createFirewallRule",
    "Lets traffic in to a public address (nothing comes in without a rule)",
    kind=Kind.ASYNC,
    event="FIREWALL.OPEN",
    params=(
        Param("ipaddressid", T.UUID, "The public address", required=True),
        Param("protocol", T.STRING, "tcp, udp, icmp or all", required=True, max_length=8),
        Param("startport", T.INTEGER, "The first port (tcp, udp)"),
        Param("endport", T.INTEGER, "The last port (default: startport)"),
        Param("cidrlist", T.LIST, "The source CIDRs allowed (default 0.0.0.0/0)"),
        Param("type", T.STRING, "user (the only kind)", choices=("user",)),
    ),
)
def create_firewall_rule(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    rule = natrules.create_firewall_rule(ctx, args)
    return _apply(ctx, "createFirewallRule", rule.network_id, "firewallrule", rule.id, "FirewallRule")


@api(
    "listFirewallRules",
    "Lists firewall rules of public addresses",
    kind=Kind.LIST,
    response="firewallrule",
    owned=True,
    params=(
        Param("id", T.UUID, "The ID of the rule"),
        Param("ipaddressid", T.UUID, "The public address of the rules"),
        Param("networkid", T.UUID, "The network of the rules"),
    ),
)
def list_firewall_rules(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = natrules.list_firewall_rules(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda r: v.firewall_rule(ctx.session, r)), total)


@api(
    "deleteFirewallRule",
    "Deletes a firewall rule of a public address",
    kind=Kind.ASYNC,
    event="FIREWALL.CLOSE",
    params=(Param("id", T.UUID, "The ID of the rule", required=True),),
)
def delete_firewall_rule(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    rule = natrules.get_firewall_rule(ctx, args["id"])
    return _revoke(ctx, "deleteFirewallRule", rule.network_id, "firewallrule", rule.id, "FirewallRule")


@api(
    "createEgressFirewallRule",
    "Filters what guests of an isolated network send out: blocks the traffic it names (the offering's egress "
    "default policy allow) or lets only it out (deny)",
    kind=Kind.ASYNC,
    event="FIREWALL.EGRESS.OPEN",
    params=(
        Param("networkid", T.UUID, "The isolated network", required=True),
        Param("protocol", T.STRING, "tcp, udp, icmp or all", required=True, max_length=8),
        Param("startport", T.INTEGER, "The first destination port (tcp, udp; none: every port)"),
        Param("endport", T.INTEGER, "The last destination port (default: startport)"),
        Param("cidrlist", T.LIST, "Guest source CIDRs inside the network (default: the whole network)"),
        Param("destcidrlist", T.LIST, "Destination CIDRs (default: anywhere)"),
        Param("icmptype", T.INTEGER, "ICMP type (-1: any)"),
        Param("icmpcode", T.INTEGER, "ICMP code (-1: any)"),
        Param("type", T.STRING, "user (the only kind)", choices=("user",)),
    ),
)
def create_egress_rule(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    rule = egress.create_rule(ctx, args)
    return _apply(ctx, "createEgressFirewallRule", rule.network_id, "egressrule", rule.id, "FirewallRule")


@api(
    "listEgressFirewallRules",
    "Lists egress firewall rules of isolated networks",
    kind=Kind.LIST,
    response="firewallrule",
    owned=True,
    params=(
        Param("id", T.UUID, "The ID of the rule"),
        Param("networkid", T.UUID, "The network of the rules"),
    ),
)
def list_egress_rules(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = egress.list_rules(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda r: v.egress_rule(ctx.session, r)), total)


@api(
    "deleteEgressFirewallRule",
    "Deletes an egress firewall rule",
    kind=Kind.ASYNC,
    event="FIREWALL.EGRESS.CLOSE",
    params=(Param("id", T.UUID, "The ID of the rule", required=True),),
)
def delete_egress_rule(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    rule = egress.get_rule(ctx, args["id"])
    return _revoke(ctx, "deleteEgressFirewallRule", rule.network_id, "egressrule", rule.id, "FirewallRule")


@api(
    "enableStaticNat",
    "Gives a public address whole to a VM of its network (in and out); synchronous, as in CloudStack",
    kind=Kind.SUCCESS,
    event="STATICNAT.ENABLE",
    params=(
        Param("ipaddressid", T.UUID, "The public address (not the source NAT one)", required=True),
        Param("virtualmachineid", T.UUID, "The VM", required=True),
        Param("networkid", T.UUID, "The address's network"),
        Param("vmguestip", T.STRING, "The VM's address on the network (its NIC's)", max_length=64),
    ),
)
def enable_static_nat(ctx: CallContext, args: dict[str, Any]) -> None:
    ip = natrules.enable_static_nat(ctx, args)
    network = ctx.session.get(Network, ip.network_id)
    assert network is not None
    for call in nics.refresh_network(ctx.session, network):
        call.run()  # a failure answers the error and the change is rolled back


@api(
    "disableStaticNat",
    "Takes a public address's static NAT away",
    kind=Kind.ASYNC,
    event="STATICNAT.DISABLE",
    params=(Param("ipaddressid", T.UUID, "The public address", required=True),),
)
def disable_static_nat(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    ip = publicips.get_address(ctx, args["ipaddressid"], "ipaddressid")
    if ip.static_nat_vm_id is None:
        raise InvalidParameter(f"Public IP address {ip.address} (ipaddressid) has no static NAT")
    params = StaticNatParams(network_id=ip.network_id, ip_id=ip.id)
    return AsyncStarted(jobs.submit_operation(ctx, DisableStaticNat, params, "IpAddress", ip.id))
