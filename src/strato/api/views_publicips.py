"""CloudStack response objects of public IP ranges (vlan), public addresses, port forwarding rules and
firewall rules."""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy.orm import Session

from strato.api.viewkit import clean, cs_date, fetch, name_of, owner_fields, register_result
from strato.db.models import (
    EgressRule,
    Network,
    PortForwardingRule,
    PublicFirewallRule,
    PublicIpAddress,
    PublicIpRange,
    VirtualMachine,
    Zone,
)


def ip_range(session: Session, r: PublicIpRange) -> dict[str, Any]:
    net = ipaddress.IPv4Network(f"{r.gateway}/{r.netmask}", strict=False)
    return clean(
        {
            "id": r.id,
            "forvirtualnetwork": r.for_virtual_network,
            "zoneid": r.zone_id,
            "zonename": name_of(session, Zone, r.zone_id),
            "vlan": f"vlan://{r.vlan}",
            "gateway": r.gateway,
            "netmask": r.netmask,
            "cidr": str(net),
            "startip": r.start_ip,
            "endip": r.end_ip,
            "physicalnetworkid": r.physical_network_id,
            "description": f"{r.start_ip}-{r.end_ip}",
        }
    )


def public_ip(session: Session, ip: PublicIpAddress) -> dict[str, Any]:
    network = fetch(session, Network, ip.network_id)
    vm = fetch(session, VirtualMachine, ip.static_nat_vm_id) if ip.static_nat_vm_id else None
    r = fetch(session, PublicIpRange, ip.range_id)
    return clean(
        {
            "id": ip.id,
            "ipaddress": ip.address,
            "allocated": cs_date(ip.created),
            "zoneid": ip.zone_id,
            "zonename": name_of(session, Zone, ip.zone_id),
            "issourcenat": ip.source_nat,
            "isstaticnat": ip.static_nat_vm_id is not None,
            "issystem": False,
            "forvirtualnetwork": True,
            "vlanid": ip.range_id,
            "vlanname": f"vlan://{r.vlan}" if r else None,
            "associatednetworkid": ip.network_id,
            "associatednetworkname": network.name if network else None,
            "networkid": network.physical_network_id if network else None,
            "physicalnetworkid": r.physical_network_id if r else None,
            "virtualmachineid": vm.id if vm else None,
            "virtualmachinename": vm.name if vm else None,
            "vmipaddress": ip.static_nat_ip,
            "state": ip.state,
            **owner_fields(session, ip.account_id),
        }
    )


def _vm_fields(session: Session, vm_id: str) -> dict[str, Any]:
    vm = fetch(session, VirtualMachine, vm_id)
    return {"virtualmachineid": vm_id, "virtualmachinename": vm.name if vm else None,
            "virtualmachinedisplayname": vm.display_name if vm else None}  # fmt: skip


def port_forward(session: Session, f: PortForwardingRule) -> dict[str, Any]:
    ip = fetch(session, PublicIpAddress, f.ip_address_id)
    return clean(
        {
            "id": f.id,
            "protocol": f.protocol,
            "publicport": str(f.public_start),
            "publicendport": str(f.public_end),
            "privateport": str(f.private_start),
            "privateendport": str(f.private_end),
            "ipaddressid": f.ip_address_id,
            "ipaddress": ip.address if ip else None,
            "vmguestip": f.vm_ip,
            "networkid": f.network_id,
            "state": f.state,
            "cidrlist": "",
            "fordisplay": True,
            **_vm_fields(session, f.vm_id),
        }
    )


def firewall_rule(session: Session, w: PublicFirewallRule) -> dict[str, Any]:
    ip = fetch(session, PublicIpAddress, w.ip_address_id)
    return clean(
        {
            "id": w.id,
            "protocol": w.protocol,
            "startport": w.start_port,
            "endport": w.end_port,
            "ipaddressid": w.ip_address_id,
            "ipaddress": ip.address if ip else None,
            "networkid": w.network_id,
            "cidrlist": ",".join(w.cidrs),
            "traffictype": "Ingress",
            "state": w.state,
            "fordisplay": True,
        }
    )


def egress_rule(session: Session, e: EgressRule) -> dict[str, Any]:
    """As CloudStack answers an egress rule: a `firewallrule` with traffictype Egress."""
    return clean(
        {
            "id": e.id,
            "protocol": e.protocol,
            "startport": e.start_port,
            "endport": e.end_port,
            "icmptype": e.icmp_type,
            "icmpcode": e.icmp_code,
            "networkid": e.network_id,
            "cidrlist": ",".join(e.cidrs),
            "destcidrlist": ",".join(e.dest_cidrs),
            "traffictype": "Egress",
            "state": e.state,
            "fordisplay": True,
        }
    )


def _firewall_result(session: Session, row_id: str, _admin: bool) -> dict[str, Any] | None:
    """A job's `firewallrule`: a public address's rule or an egress one (both answer under that name)."""
    rule = session.get(PublicFirewallRule, row_id)
    if rule is not None:
        return firewall_rule(session, rule)
    out = session.get(EgressRule, row_id)
    return egress_rule(session, out) if out is not None else None


def _renderer(model: Any, view: Any) -> Any:
    def render(session: Session, row_id: str, _admin: bool) -> dict[str, Any] | None:
        row = session.get(model, row_id)
        return view(session, row) if row is not None else None

    return render


register_result("ipaddress", _renderer(PublicIpAddress, public_ip))
register_result("portforwardingrule", _renderer(PortForwardingRule, port_forward))
register_result("firewallrule", _firewall_result)
