"""Public addresses of isolated networks: the zone's public ranges, the addresses taken from them (a row
per address in use, deleted when it is released, so the unique constraint on (zone, address) makes a
double hand-out impossible even with several servers), and the rules on them: port forwards and the
firewall of what may come in."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity


class PublicIpRange(Entity):
    """CloudStack's "vlan": a range of public addresses of a zone (createVlanIpRange)."""

    __tablename__ = "public_ip_ranges"

    zone_id: Mapped[str] = mapped_column(ForeignKey("zones.id"), index=True)
    physical_network_id: Mapped[str] = mapped_column(ForeignKey("physical_networks.id"), index=True)
    gateway: Mapped[str] = mapped_column(String(64))
    netmask: Mapped[str] = mapped_column(String(64))
    start_ip: Mapped[str] = mapped_column(String(64))
    end_ip: Mapped[str] = mapped_column(String(64))
    vlan: Mapped[str] = mapped_column(String(64), default="untagged")
    for_virtual_network: Mapped[bool] = mapped_column(default=True)


class PublicIpAddress(Entity):
    __tablename__ = "public_ip_addresses"
    __table_args__ = (UniqueConstraint("zone_id", "address", name="uq_public_ip_addresses_zone_address"),)

    range_id: Mapped[str] = mapped_column(ForeignKey("public_ip_ranges.id"), index=True)
    zone_id: Mapped[str] = mapped_column(ForeignKey("zones.id"), index=True)
    address: Mapped[str] = mapped_column(String(64))
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"), index=True)
    source_nat: Mapped[bool] = mapped_column(default=False)
    state: Mapped[str] = mapped_column(String(16), default="Allocated")
    static_nat_vm_id: Mapped[str | None] = mapped_column(ForeignKey("virtual_machines.id"), default=None)
    static_nat_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    """The guest address the whole public address goes to (enableStaticNat)."""


class PortForwardingRule(Entity):
    __tablename__ = "port_forwarding_rules"

    ip_address_id: Mapped[str] = mapped_column(ForeignKey("public_ip_addresses.id"), index=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    protocol: Mapped[str] = mapped_column(String(8))
    public_start: Mapped[int] = mapped_column(Integer)
    public_end: Mapped[int] = mapped_column(Integer)
    private_start: Mapped[int] = mapped_column(Integer)
    private_end: Mapped[int] = mapped_column(Integer)
    vm_id: Mapped[str] = mapped_column(ForeignKey("virtual_machines.id"), index=True)
    vm_ip: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="Add")
    """Add (not on the router yet), Active, Revoke (leaving the router)."""


class PublicFirewallRule(Entity):
    """What may come in to a public address (createFirewallRule); a port forward made with openfirewall
    brings its own (`forward_id`), which goes with it."""

    __tablename__ = "public_firewall_rules"

    ip_address_id: Mapped[str] = mapped_column(ForeignKey("public_ip_addresses.id"), index=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    protocol: Mapped[str] = mapped_column(String(8))
    start_port: Mapped[int | None] = mapped_column(Integer, default=None)
    end_port: Mapped[int | None] = mapped_column(Integer, default=None)
    cidrs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    forward_id: Mapped[str | None] = mapped_column(ForeignKey("port_forwarding_rules.id"), default=None)
    state: Mapped[str] = mapped_column(String(16), default="Add")
