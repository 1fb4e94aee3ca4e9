"""Guest networking: physical networks of a zone, guest networks on them, and the NICs of VMs.

A NIC row holds its IP and MAC (both chosen by the server): unique per network and globally, so two
servers can never hand out one address twice. NIC rows are deleted, not soft-deleted, when the NIC
goes, so the unique constraints stay simple."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity


class PhysicalNetwork(Entity):
    __tablename__ = "physical_networks"

    name: Mapped[str] = mapped_column(String(255), index=True)
    zone_id: Mapped[str] = mapped_column(ForeignKey("zones.id"), index=True)
    isolation_method: Mapped[str] = mapped_column(String(16), default="VXLAN")
    vlan: Mapped[str | None] = mapped_column(String(255), default=None)
    """The VNI (or VLAN id) ranges networks may use, CloudStack's text: "100-200,300-310"."""
    state: Mapped[str] = mapped_column(String(16), default="Disabled")
    tags: Mapped[str | None] = mapped_column(String(255), default=None)
    traffic_types: Mapped[list[Any]] = mapped_column(JSON, default=list)
    """[{"id": ..., "traffictype": "Guest", "kvmnetworklabel": ...}, ...]"""


class Network(Entity):
    __tablename__ = "networks"

    name: Mapped[str] = mapped_column(String(255), index=True)
    display_text: Mapped[str] = mapped_column(String(4096))
    zone_id: Mapped[str] = mapped_column(ForeignKey("zones.id"), index=True)
    physical_network_id: Mapped[str] = mapped_column(ForeignKey("physical_networks.id"), index=True)
    network_offering_id: Mapped[str] = mapped_column(String(36))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"), index=True)
    guest_type: Mapped[str] = mapped_column(String(16), default="Isolated")
    state: Mapped[str] = mapped_column(String(16), default="Allocated")
    gateway: Mapped[str] = mapped_column(String(64))
    cidr: Mapped[str] = mapped_column(String(64))
    start_ip: Mapped[str] = mapped_column(String(64))
    end_ip: Mapped[str] = mapped_column(String(64))
    vlan: Mapped[int] = mapped_column(Integer)
    """The VNI on a VXLAN physical network (the VLAN id on a VLAN one)."""
    router_host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), default=None)
    """The host running the network's virtual router (namespace + dnsmasq), chosen at first start."""
    network_domain: Mapped[str | None] = mapped_column(String(255), default=None)
    """The DNS domain of the network's guests (createNetwork networkdomain, else the account's, the
    domain's, or CloudStack's cs<account>cloud.internal); None on rows older than the column."""


class Nic(Entity):
    __tablename__ = "nics"
    __table_args__ = (
        UniqueConstraint("network_id", "ip_address", name="uq_nics_network_ip"),
        UniqueConstraint("mac_address", name="uq_nics_mac"),
    )

    vm_id: Mapped[str] = mapped_column(ForeignKey("virtual_machines.id"), index=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    device_id: Mapped[int] = mapped_column(Integer, default=0)
    ip_address: Mapped[str] = mapped_column(String(64))
    mac_address: Mapped[str] = mapped_column(String(17))
    is_default: Mapped[bool] = mapped_column(default=False)


class NetworkOfferingRow(Entity):
    """A network offering an admin made (createNetworkOffering); CloudStack's default offerings are fixed
    in code (services/network/offerings.py) and never stored."""

    __tablename__ = "network_offerings"

    name: Mapped[str] = mapped_column(String(255), index=True)
    display_text: Mapped[str] = mapped_column(String(4096))
    guest_ip_type: Mapped[str] = mapped_column(String(16))
    services: Mapped[list[Any]] = mapped_column(JSON, default=list)
    specify_vlan: Mapped[bool] = mapped_column(default=False)
    specify_ip_ranges: Mapped[bool] = mapped_column(default=False)
    egress_default_allow: Mapped[bool] = mapped_column(default=True)
    """CloudStack's egressdefaultpolicy: true, guests may send anywhere and egress rules block; false,
    nothing leaves the network but what an egress rule allows."""
    conserve_mode: Mapped[bool] = mapped_column(default=True)
    availability: Mapped[str] = mapped_column(String(16), default="Optional")
    state: Mapped[str] = mapped_column(String(16), default="Disabled")


class EgressRule(Entity):
    """What guests of an isolated network may send out (or may not: see the offering's egress default
    policy), createEgressFirewallRule; applied in the network's virtual router."""

    __tablename__ = "egress_firewall_rules"

    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    protocol: Mapped[str] = mapped_column(String(8))
    start_port: Mapped[int | None] = mapped_column(Integer, default=None)
    end_port: Mapped[int | None] = mapped_column(Integer, default=None)
    icmp_type: Mapped[int | None] = mapped_column(Integer, default=None)
    icmp_code: Mapped[int | None] = mapped_column(Integer, default=None)
    cidrs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    """Source addresses, inside the guest network (empty: the whole network)."""
    dest_cidrs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    """Destinations (empty: anywhere)."""
    state: Mapped[str] = mapped_column(String(16), default="Add")
