"""CloudStack response objects of security groups and their rules."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from strato.api.viewkit import clean, owner_fields
from strato.db.models import Account, SecurityGroup, SecurityGroupRule
from strato.db.models.secgroups import INGRESS
from strato.services.network.secgroups import members, rules_of


def rule(session: Session, r: SecurityGroupRule) -> dict[str, Any]:
    peer = session.get(SecurityGroup, r.peer_group_id) if r.peer_group_id else None
    peer_owner = session.get(Account, peer.account_id) if peer is not None else None
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


def security_group(session: Session, g: SecurityGroup, only: list[SecurityGroupRule] | None = None) -> dict[str, Any]:
    """The group with its rules (only those of `only`: what an authorize call made, as CloudStack's)."""
    rules = rules_of(session, g.id) if only is None else only
    vms = members(session, g.id)
    return clean(
        {
            "id": g.id,
            "name": g.name,
            "description": g.description,
            "ingressrule": [rule(session, r) for r in rules if r.direction == INGRESS],
            "egressrule": [rule(session, r) for r in rules if r.direction != INGRESS],
            "virtualmachinecount": len(vms),
            "virtualmachineids": sorted(v.id for v in vms),
            "tags": [],
            **owner_fields(session, g.account_id),
        }
    )
