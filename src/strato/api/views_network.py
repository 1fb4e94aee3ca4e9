"""CloudStack response objects of physical networks, network offerings, networks and NICs."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.api.pageload import Loader, related
from strato.api.viewkit import clean, cs_date, fetch, name_of, owner_fields, register_result
from strato.db import rows as dbrows
from strato.db.models import Network, NetworkOfferingRow, Nic, PhysicalNetwork, Zone
from strato.services.network import offerings
from strato.services.network.offerings import NetworkOffering


def physical_network(session: Session, pn: PhysicalNetwork) -> dict[str, Any]:
    return clean(
        {
            "id": pn.id,
            "name": pn.name,
            "zoneid": pn.zone_id,
            "zonename": name_of(session, Zone, pn.zone_id),
            "isolationmethods": pn.isolation_method,
            "vlan": pn.vlan,
            "state": pn.state,
            "tags": pn.tags,
            "broadcastdomainrange": "ZONE",
        }
    )


def traffic_type(entry: dict[str, Any]) -> dict[str, Any]:
    return clean(dict(entry))


def provider(pn: PhysicalNetwork) -> dict[str, Any]:
    return {
        "id": f"{pn.id}-vr",
        "name": "VirtualRouter",
        "physicalnetworkid": pn.id,
        "state": "Enabled",
        "servicelist": ["Dhcp", "SourceNat", "PortForwarding", "Firewall", "StaticNat"],
        "canenableindividualservice": True,
    }


def network_offering(o: NetworkOffering) -> dict[str, Any]:
    return {
        "id": o.id,
        "name": o.name,
        "displaytext": o.display_text,
        "guestiptype": o.guest_ip_type,
        "traffictype": "Guest",
        "state": o.state,
        "isdefault": o.is_default,
        "specifyvlan": o.specify_vlan,
        "specifyipranges": o.specify_ip_ranges,
        "availability": o.availability,
        "conservemode": o.conserve_mode,
        "egressdefaultpolicy": o.egress_default_allow,
        "service": [{"name": s, "provider": [{"name": "VirtualRouter"}]} for s in o.services],
    }


def _offering(session: Session, offering_id: str) -> NetworkOffering | None:
    """offerings.find through the page's preloaded rows (a network's offering id is no foreign key:
    pageload follows it all the same)."""
    if offering_id in offerings.BY_ID:
        return offerings.BY_ID[offering_id]
    row = fetch(session, NetworkOfferingRow, offering_id)
    return offerings.from_row(row) if row is not None and row.removed is None else None


def network(session: Session, n: Network) -> dict[str, Any]:
    net = ipaddress.IPv4Network(n.cidr)
    offering = _offering(session, n.network_offering_id)
    return clean(
        {
            "id": n.id,
            "name": n.name,
            "displaytext": n.display_text,
            "zoneid": n.zone_id,
            "zonename": name_of(session, Zone, n.zone_id),
            "physicalnetworkid": n.physical_network_id,
            "networkofferingid": n.network_offering_id,
            "networkofferingname": offering.name if offering else None,
            "type": n.guest_type,
            "traffictype": "Guest",
            "state": n.state,
            "gateway": n.gateway,
            "netmask": str(net.netmask),
            "cidr": n.cidr,
            "startip": n.start_ip,
            "endip": n.end_ip,
            "vlan": str(n.vlan),
            "broadcasturi": f"vxlan://{n.vlan}",
            "broadcastdomaintype": "Vxlan",
            "acltype": "Domain" if n.guest_type == "Shared" else "Account",
            "created": cs_date(n.created),
            "service": [{"name": s} for s in (offering.services if offering else ())],
            "networkdomain": n.network_domain if offering and "Dns" in offering.services else None,
            **owner_fields(session, n.account_id),
        }
    )


def nic(session: Session, row: Nic) -> dict[str, Any]:
    n = fetch(session, Network, row.network_id)
    net = ipaddress.IPv4Network(n.cidr) if n is not None else None
    return clean(
        {
            "id": row.id,
            "networkid": row.network_id,
            "networkname": n.name if n else None,
            "ipaddress": row.ip_address,
            "netmask": str(net.netmask) if net else None,
            "gateway": n.gateway if n else None,
            "macaddress": row.mac_address,
            "isdefault": row.is_default,
            "type": n.guest_type if n else None,
            "traffictype": "Guest",
            "broadcasturi": f"vxlan://{n.vlan}" if n else None,
            "deviceid": str(row.device_id),
            "virtualmachineid": row.vm_id,
        }
    )


def _nics_of_vms(session: Session) -> Loader:
    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        rows = dbrows.load(
            session, Nic, select(Nic).where(dbrows.among(session, Nic.vm_id, ids)).order_by(Nic.vm_id, Nic.device_id)
        )
        return [(row.vm_id, row) for row in rows]

    return load


def vm_nic_list(session: Session, vm_id: str) -> list[dict[str, Any]]:
    """The `nic` list of a VM response (in a page, every VM's NICs come with one query)."""
    return [nic(session, row) for row in related(session, "vm.nics", vm_id, _nics_of_vms(session))]


def _network_result(session: Session, network_id: str, _admin: bool) -> dict[str, Any] | None:
    row = session.get(Network, network_id)
    return network(session, row) if row is not None else None


register_result("network", _network_result)
