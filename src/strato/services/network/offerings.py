"""Network offerings: CloudStack's defaults, fixed in code (stable ids, always Enabled), and those an admin
makes (createNetworkOffering, rows of network_offerings). Either is seen through one NetworkOffering;
the services an offering may list are only those that work here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import NetworkOfferingRow

_NS = uuid.UUID("6f1d9a52-6a61-4c53-9d1c-3a1f0b6e0c12")

ISOLATED_SERVICES = ("Dhcp", "Dns", "SourceNat", "PortForwarding", "Firewall", "StaticNat")
SHARED_SERVICES = ("Dhcp", "Dns", "SecurityGroup")
NEEDS_SOURCE_NAT = ("PortForwarding", "Firewall", "StaticNat")
"""These live on the router's public side, which a network has only with source NAT."""


@dataclass(frozen=True)
class NetworkOffering:
    name: str
    display_text: str
    guest_ip_type: str
    services: tuple[str, ...]
    """Only services this release really provides (DHCP and DNS by dnsmasq in the virtual router; source NAT,
    port forwarding and the public firewall in its namespace, given a public range in the zone)."""
    specify_vlan: bool = False
    specify_ip_ranges: bool = False
    egress_default_allow: bool = True
    """egressdefaultpolicy: guests reach the outside unless an egress rule blocks it (the defaults' choice:
    source NAT has always let every guest out), or, false, only where a rule allows."""
    state: str = "Enabled"
    availability: str = "Optional"
    conserve_mode: bool = True
    row_id: str | None = None
    """The table row of an admin's offering; None for a default one."""

    @property
    def id(self) -> str:
        return self.row_id or str(uuid.uuid5(_NS, self.name))

    @property
    def is_default(self) -> bool:
        return self.row_id is None


DEFAULT_OFFERINGS = (
    NetworkOffering(
        "DefaultIsolatedNetworkOfferingWithSourceNatService",
        "Offering for Isolated networks with Source Nat service enabled",
        "Isolated",
        ISOLATED_SERVICES,
    ),
    NetworkOffering(
        "DefaultSharedNetworkOfferingWithSGService",
        "Offering for Shared Security group enabled networks",
        "Shared",
        SHARED_SERVICES,
        specify_vlan=True,
        specify_ip_ranges=True,
    ),
    NetworkOffering(
        "DefaultIsolatedNetworkOffering",
        "Offering for Isolated networks with no Source Nat service",
        "Isolated",
        ("Dhcp", "Dns"),
    ),
)
BY_ID = {o.id: o for o in DEFAULT_OFFERINGS}


def from_row(row: NetworkOfferingRow) -> NetworkOffering:
    return NetworkOffering(
        name=row.name,
        display_text=row.display_text,
        guest_ip_type=row.guest_ip_type,
        services=tuple(row.services),
        specify_vlan=row.specify_vlan,
        specify_ip_ranges=row.specify_ip_ranges,
        egress_default_allow=row.egress_default_allow,
        state=row.state,
        availability=row.availability,
        conserve_mode=row.conserve_mode,
        row_id=row.id,
    )


def find(session: Session, offering_id: str) -> NetworkOffering | None:
    """The offering with that id, default or made, None if there is none (or it was deleted)."""
    if offering_id in BY_ID:
        return BY_ID[offering_id]
    row = session.get(NetworkOfferingRow, offering_id)
    return from_row(row) if row is not None and row.removed is None else None


def all_offerings(session: Session) -> list[NetworkOffering]:
    rows = session.scalars(
        select(NetworkOfferingRow)
        .where(NetworkOfferingRow.removed.is_(None))
        .order_by(NetworkOfferingRow.created, NetworkOfferingRow.id)
    )
    return [*DEFAULT_OFFERINGS, *(from_row(r) for r in rows)]


def ids_with_service(session: Session, service: str) -> list[str]:
    return [o.id for o in all_offerings(session) if service in o.services]
