"""CloudStack's default network offerings, fixed in code: the services listed are those that work here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

_NS = uuid.UUID("6f1d9a52-6a61-4c53-9d1c-3a1f0b6e0c12")


@dataclass(frozen=True)
class NetworkOffering:
    name: str
    display_text: str
    guest_ip_type: str
    services: tuple[str, ...]
    """Only services this release really provides (DHCP by dnsmasq in the virtual router; source NAT,
    port forwarding and the public firewall in its namespace, given a public range in the zone)."""
    specify_vlan: bool = False
    specify_ip_ranges: bool = False

    @property
    def id(self) -> str:
        return str(uuid.uuid5(_NS, self.name))


DEFAULT_OFFERINGS = (
    NetworkOffering(
        "DefaultIsolatedNetworkOfferingWithSourceNatService",
        "Offering for Isolated networks with Source Nat service enabled",
        "Isolated",
        ("Dhcp", "SourceNat", "PortForwarding", "Firewall", "StaticNat"),
    ),
    NetworkOffering(
        "DefaultSharedNetworkOfferingWithSGService",
        "Offering for Shared Security group enabled networks",
        "Shared",
        ("Dhcp", "SecurityGroup"),
        specify_vlan=True,
        specify_ip_ranges=True,
    ),
    NetworkOffering(
        "DefaultIsolatedNetworkOffering",
        "Offering for Isolated networks with no Source Nat service",
        "Isolated",
        ("Dhcp",),
    ),
)
BY_ID = {o.id: o for o in DEFAULT_OFFERINGS}
