"""CloudStack response objects of security groups and their rules."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.api.pageload import Loader, prefetch, related
from strato.api.viewkit import clean, fetch, owner_fields
from strato.db.models import Account, SecurityGroup, SecurityGroupRule, VirtualMachine, VmSecurityGroup
from strato.db.models.secgroups import INGRESS


def rule(session: Session, r: SecurityGroupRule) -> dict[str, Any]:
    peer = fetch(session, SecurityGroup, r.peer_group_id) if r.peer_group_id else None
    peer_owner = fetch(session, Account, peer.account_id) if peer is not None else None
    return clean(
        {
            "ruleid": r.id,
            "protocol": r.protocol,
            "startport": r.start_port,
            "endport": r.end_port,
            "icmptype": r.icmp_type,
            "icmpcode": r.icmp_code,
            "cidr": r.cidr,
            "securitygroupname": peer.name if peer is not None else None,
            "account": peer_owner.name if peer_owner is not None else None,
            "tags": [],
        }
    )


def security_group(
    session: Session,
    g: SecurityGroup,
    only: list[SecurityGroupRule] | None = None,
    vm_ids: list[str] | None = None,
) -> dict[str, Any]:
    """The group with its rules (only those of `only`: what an authorize call made, as CloudStack's)."""
    if only is None or vm_ids is None:
        found = related(session, "securitygroup.contents", g.id, _contents_of_groups(session), refs=False)
        rules, members = found[0] if found else ([], [])
        only = rules if only is None else only
        vm_ids = members if vm_ids is None else vm_ids
    return clean(
        {
            "id": g.id,
            "name": g.name,
            "description": g.description,
            "ingressrule": [rule(session, r) for r in only if r.direction == INGRESS],
            "egressrule": [rule(session, r) for r in only if r.direction != INGRESS],
            "virtualmachinecount": len(vm_ids),
            "virtualmachineids": sorted(vm_ids),
            "tags": [],
            **owner_fields(session, g.account_id),
        }
    )


def _rules_and_members(
    session: Session, group_ids: Collection[str]
) -> tuple[dict[str, list[SecurityGroupRule]], dict[str, list[str]]]:
    """The rules and the member VMs (not expunged) of each group, in two queries; the rules' peer
    groups and their accounts are loaded with the page."""
    rules: dict[str, list[SecurityGroupRule]] = {g: [] for g in group_ids}
    found = list(
        session.scalars(
            select(SecurityGroupRule)
            .where(SecurityGroupRule.group_id.in_(group_ids))
            .order_by(SecurityGroupRule.created, SecurityGroupRule.id)
        )
    )
    for r in found:
        rules[r.group_id].append(r)
    vms: dict[str, list[str]] = {g: [] for g in group_ids}
    for gid, vid in session.execute(
        select(VmSecurityGroup.group_id, VmSecurityGroup.vm_id)
        .join(VirtualMachine, VirtualMachine.id == VmSecurityGroup.vm_id)
        .where(VmSecurityGroup.group_id.in_(group_ids), VirtualMachine.removed.is_(None))
    ).tuples():
        vms[gid].append(vid)
    prefetch(session, found)
    return rules, vms


def _contents_of_groups(session: Session) -> Loader:
    """Each group's (rules, member VM ids), for a page of groups in two queries."""

    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        rules, vms = _rules_and_members(session, ids)
        return [(gid, (rules[gid], vms[gid])) for gid in ids]

    return load


def _groups_of_vms(session: Session) -> Loader:
    """Each VM's groups with their rules and members, for a whole page in three queries."""

    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        found = session.execute(
            select(VmSecurityGroup.vm_id, SecurityGroup)
            .join(SecurityGroup, SecurityGroup.id == VmSecurityGroup.group_id)
            .where(VmSecurityGroup.vm_id.in_(ids))
            .order_by(VmSecurityGroup.vm_id, SecurityGroup.name)
        ).tuples()
        pairs = list(found)
        if not pairs:
            return []
        rules, vms = _rules_and_members(session, {g.id for _, g in pairs})
        return [(vm_id, (g, rules[g.id], vms[g.id])) for vm_id, g in pairs]

    return load


def vm_security_groups(session: Session, vm_id: str) -> list[dict[str, Any]]:
    """The `securitygroup` list of a VM response (in a page, every VM's groups come with three queries)."""
    bundles = related(session, "vm.securitygroups", vm_id, _groups_of_vms(session), refs=False)
    return [security_group(session, g, only=rules, vm_ids=vm_ids) for g, rules, vm_ids in bundles]
