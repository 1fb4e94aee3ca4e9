"""Security groups: an account's named sets of VMs, each with ingress and egress rules.

A rule row is one CloudStack rule: one protocol and port (or ICMP type/code) range with one source
(ingress) or destination (egress) that is either a CIDR or another group's members. A request that
names several CIDRs and groups makes one row each, as CloudStack does (each has its own ruleid).
Rows are deleted, not soft-deleted: nothing refers to a revoked rule or a deleted group."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity

INGRESS = "ingress"
EGRESS = "egress"


class SecurityGroup(Entity):
    __tablename__ = "security_groups"
    __table_args__ = (UniqueConstraint("account_id", "name", name="uq_security_groups_account_name"),)

    name: Mapped[str] = mapped_column(String(255), index=True)
    description: Mapped[str | None] = mapped_column(String(4096), default=None)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id"), index=True)


class SecurityGroupRule(Entity):
    __tablename__ = "security_group_rules"

    group_id: Mapped[str] = mapped_column(ForeignKey("security_groups.id"), index=True)
    direction: Mapped[str] = mapped_column(String(8))
    """ingress or egress"""
    protocol: Mapped[str] = mapped_column(String(8))
    """tcp, udp, icmp or all"""
    start_port: Mapped[int | None] = mapped_column(Integer, default=None)
    end_port: Mapped[int | None] = mapped_column(Integer, default=None)
    icmp_type: Mapped[int | None] = mapped_column(Integer, default=None)
    icmp_code: Mapped[int | None] = mapped_column(Integer, default=None)
    cidr: Mapped[str | None] = mapped_column(String(64), default=None)
    peer_group_id: Mapped[str | None] = mapped_column(ForeignKey("security_groups.id"), default=None, index=True)
    """The group whose members' addresses are the source (ingress) or destination (egress)."""


class VmSecurityGroup(Entity):
    __tablename__ = "vm_security_groups"
    __table_args__ = (UniqueConstraint("vm_id", "group_id", name="uq_vm_security_groups"),)

    vm_id: Mapped[str] = mapped_column(ForeignKey("virtual_machines.id"), index=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("security_groups.id"), index=True)
