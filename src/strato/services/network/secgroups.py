"""Security groups: create, list, delete, authorize and revoke rules, and the groups of a VM.

Each account has a `default` group, made the first time anything asks for it (listing, deploying,
naming it in a rule), so accounts that existed before security groups have one too. Unlike
CloudStack's (which lets nothing in), Strato's default group is made with one visible ingress rule
letting in all traffic from the group's own members, so an account's VMs reach each other until the
rule is revoked. Ingress is denied unless a rule allows it; egress is allowed while none of a VM's
groups has an egress rule, otherwise only what they allow (CloudStack's semantics)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from strato.db.models import Account, SecurityGroup, SecurityGroupRule, VirtualMachine, VmSecurityGroup, Zone
from strato.db.models.secgroups import INGRESS
from strato.errors import InvalidParameter, NotFound, ResourceInUse
from strato.services.core.access import get_owned, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.identity.identity import find_account

DEFAULT = "default"
DEFAULT_DESCRIPTION = "Default Security Group"
PROTOCOLS = ("tcp", "udp", "icmp", "all")


def ensure_default(session: Session, account: Account) -> SecurityGroup:
    """The account's default group, made (with its own-members ingress rule) when missing. Two servers
    making it at once: the unique (account, name) lets one win, the other reads it."""
    found = _by_name(session, account.id, DEFAULT)
    if found is not None:
        return found
    try:
        with session.begin_nested():
            group = SecurityGroup(
                name=DEFAULT, description=DEFAULT_DESCRIPTION, account_id=account.id, domain_id=account.domain_id
            )
            session.add(group)
            session.flush()
            session.add(SecurityGroupRule(group_id=group.id, direction=INGRESS, protocol="all", peer_group_id=group.id))
            session.flush()
    except IntegrityError:
        found = _by_name(session, account.id, DEFAULT)
        assert found is not None
        return found
    return group


def _by_name(session: Session, account_id: str, name: str) -> SecurityGroup | None:
    return session.scalar(
        select(SecurityGroup).where(SecurityGroup.account_id == account_id, SecurityGroup.name == name)
    )


def _owner(ctx: CallContext, args: dict[str, Any]) -> Account:
    if args.get("account"):
        return find_account(ctx, args["account"], args.get("domainid"))
    return ctx.account


def create_group(ctx: CallContext, args: dict[str, Any]) -> SecurityGroup:
    owner = _owner(ctx, args)
    ensure_default(ctx.session, owner)
    name = args["name"].strip()
    if not name:
        raise InvalidParameter("Parameter name must not be empty")
    if _by_name(ctx.session, owner.id, name) is not None:
        raise InvalidParameter(f"Unable to create security group, a group with name {name} already exists (name)")
    group = SecurityGroup(
        name=name, description=args.get("description"), account_id=owner.id, domain_id=owner.domain_id
    )
    ctx.session.add(group)
    ctx.session.flush()
    return group


def get_group(ctx: CallContext, group_id: str, param: str = "id") -> SecurityGroup:
    try:
        row: SecurityGroup = get_owned(ctx, SecurityGroup, group_id, "security group", param)
    except NotFound:
        raise InvalidParameter(f"Unable to find security group with {param}={group_id}") from None
    return row


def find_group(ctx: CallContext, args: dict[str, Any], id_param: str, name_param: str) -> SecurityGroup:
    """A group by id, or by name in the caller's (or the given account's) groups; 431 naming the
    parameter when there is none."""
    if args.get(id_param):
        return get_group(ctx, args[id_param], id_param)
    if not args.get(name_param):
        raise InvalidParameter(f"Either {id_param} or {name_param} is required")
    owner = _owner(ctx, args)
    if args[name_param] == DEFAULT:
        return ensure_default(ctx.session, owner)
    row = _by_name(ctx.session, owner.id, args[name_param])
    if row is None:
        raise InvalidParameter(
            f"Unable to find security group {args[name_param]} ({name_param}) of account {owner.name}"
        )
    return row


def list_groups(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[SecurityGroup], int]:
    scope = owner_scope(ctx, args)
    mine = ctx.account if not args.get("account") else None
    if mine is not None:
        ensure_default(ctx.session, mine)
    live = select(Account.id).where(Account.removed.is_(None))
    q = select(SecurityGroup).where(scope.condition(SecurityGroup.account_id), SecurityGroup.account_id.in_(live))
    if args.get("id"):
        q = q.where(SecurityGroup.id == args["id"])
    if args.get("securitygroupname"):
        q = q.where(SecurityGroup.name == args["securitygroupname"])
    if args.get("virtualmachineid"):
        q = q.join(VmSecurityGroup, VmSecurityGroup.group_id == SecurityGroup.id).where(
            VmSecurityGroup.vm_id == args["virtualmachineid"]
        )
    return run_page(ctx.session, q, page, (SecurityGroup.name,), (SecurityGroup.created, SecurityGroup.id))


def members(session: Session, group_id: str) -> list[VirtualMachine]:
    """VMs (not expunged) in the group."""
    return list(
        session.scalars(
            select(VirtualMachine)
            .join(VmSecurityGroup, VmSecurityGroup.vm_id == VirtualMachine.id)
            .where(VmSecurityGroup.group_id == group_id, VirtualMachine.removed.is_(None))
        )
    )


def delete_group(ctx: CallContext, args: dict[str, Any]) -> None:
    group = find_group(ctx, args, "id", "name")
    if group.name == DEFAULT:
        raise InvalidParameter("The default security group cannot be deleted")
    used = members(ctx.session, group.id)
    if used:
        names = ", ".join(sorted(v.name for v in used)[:5])
        raise ResourceInUse(f"Cannot delete security group {group.name}: it is in use by {len(used)} VM(s) ({names})")
    referring = ctx.session.scalars(
        select(SecurityGroupRule).where(
            SecurityGroupRule.peer_group_id == group.id, SecurityGroupRule.group_id != group.id
        )
    ).all()
    if referring:
        others = sorted({g.name for r in referring if (g := ctx.session.get(SecurityGroup, r.group_id)) is not None})
        raise ResourceInUse(
            f"Cannot delete security group {group.name}: rules of group(s) {', '.join(others)} refer to it"
        )
    for row in ctx.session.scalars(select(VmSecurityGroup).where(VmSecurityGroup.group_id == group.id)):
        ctx.session.delete(row)  # expunged VMs' memberships
    for rule in ctx.session.scalars(select(SecurityGroupRule).where(SecurityGroupRule.group_id == group.id)):
        ctx.session.delete(rule)
    ctx.session.flush()
    ctx.session.delete(group)


# --- rules --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleShape:
    """What a rule matches besides its peer, checked once for every peer of the request."""

    protocol: str
    start_port: int | None
    end_port: int | None
    icmp_type: int | None
    icmp_code: int | None


def _shape(args: dict[str, Any]) -> RuleShape:
    raw = str(args.get("protocol") or "").strip().lower()
    protocol = {"-1": "all", "6": "tcp", "17": "udp", "1": "icmp"}.get(raw, raw)
    if protocol not in PROTOCOLS:
        raise InvalidParameter(f"Parameter protocol {args.get('protocol')!r} is not one of tcp, udp, icmp, all")
    start, end = args.get("startport"), args.get("endport")
    icmp_type, icmp_code = args.get("icmptype"), args.get("icmpcode")
    if protocol in ("tcp", "udp"):
        if icmp_type is not None or icmp_code is not None:
            raise InvalidParameter(f"Parameters icmptype and icmpcode are for protocol icmp, not {protocol}")
        if start is None and end is None:
            raise InvalidParameter(f"Parameters startport and endport are required for protocol {protocol}")
        start = int(start if start is not None else end or 0)
        end = start if end is None else int(end)
        for value, param in ((start, "startport"), (end, "endport")):
            if not 0 <= value <= 65535:
                raise InvalidParameter(f"Parameter {param} {value} is outside 0-65535")
        if start > end:
            raise InvalidParameter(f"Parameter startport {start} is greater than endport {end}")
        return RuleShape(protocol, start, end, None, None)
    if start is not None or end is not None:
        raise InvalidParameter(f"Parameters startport and endport are for tcp and udp, not protocol {protocol}")
    if protocol == "all":
        if icmp_type is not None or icmp_code is not None:
            raise InvalidParameter("Parameters icmptype and icmpcode are for protocol icmp, not all")
        return RuleShape(protocol, None, None, None, None)
    icmp_type = -1 if icmp_type is None else icmp_type
    icmp_code = -1 if icmp_code is None else icmp_code
    for value, param in ((icmp_type, "icmptype"), (icmp_code, "icmpcode")):
        if not -1 <= value <= 255:
            raise InvalidParameter(f"Parameter {param} {value} is outside -1..255 (-1: any)")
    if icmp_type == -1 and icmp_code != -1:
        raise InvalidParameter("Parameter icmpcode needs an icmptype")
    return RuleShape(protocol, None, None, icmp_type, icmp_code)


def _cidrs(value: Any) -> list[str]:
    """CIDRs as `a.b.c.d/n` (host bits are cleared, as the filter matches networks)."""
    items = value if isinstance(value, list) else str(value or "").split(",")
    out = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        try:
            if "/" not in item:
                raise ValueError(item)
            out.append(str(ipaddress.IPv4Network(item, strict=False)))
        except ValueError:
            raise InvalidParameter(f"Parameter cidrlist: {item!r} is not an IPv4 CIDR (a.b.c.d/n)") from None
    return out


def _peer_groups(ctx: CallContext, owner: Account, entries: Any) -> list[SecurityGroup]:
    """usersecuritygrouplist: groups of accounts of the rule's group's domain, named by account and group
    (CloudStack looks the account up in that domain, whoever it is)."""
    out = []
    for entry in entries or []:
        account, name = entry.get("account"), entry.get("group")
        if not account or not name:
            raise InvalidParameter("Parameter usersecuritygrouplist: each entry needs account and group")
        peer_owner = ctx.session.scalar(
            select(Account).where(
                Account.name == account, Account.domain_id == owner.domain_id, Account.removed.is_(None)
            )
        )
        if peer_owner is None:
            raise InvalidParameter(f"Parameter usersecuritygrouplist: unable to find account {account}")
        if name == DEFAULT:
            group: SecurityGroup | None = ensure_default(ctx.session, peer_owner)
        else:
            group = _by_name(ctx.session, peer_owner.id, name)
        if group is None:
            raise InvalidParameter(
                f"Parameter usersecuritygrouplist: unable to find security group {name} of account {account}"
            )
        out.append(group)
    return out


def authorize(ctx: CallContext, args: dict[str, Any], direction: str) -> tuple[SecurityGroup, list[SecurityGroupRule]]:
    """One rule per CIDR and per peer group (at least one of them); a rule the group already has is
    refused, as CloudStack does."""
    group = find_group(ctx, args, "securitygroupid", "securitygroupname")
    shape = _shape(args)
    cidrs = _cidrs(args.get("cidrlist"))
    owner = ctx.session.get(Account, group.account_id)
    assert owner is not None
    peers = _peer_groups(ctx, owner, args.get("usersecuritygrouplist"))
    if not cidrs and not peers:
        raise InvalidParameter("Either cidrlist or usersecuritygrouplist is required")
    existing = ctx.session.scalars(
        select(SecurityGroupRule).where(
            SecurityGroupRule.group_id == group.id, SecurityGroupRule.direction == direction
        )
    ).all()
    made: list[SecurityGroupRule] = []
    wanted: list[tuple[str | None, str | None]] = [(c, None) for c in cidrs] + [(None, p.id) for p in peers]
    for cidr, peer in wanted:
        rule = SecurityGroupRule(
            group_id=group.id,
            direction=direction,
            protocol=shape.protocol,
            start_port=shape.start_port,
            end_port=shape.end_port,
            icmp_type=shape.icmp_type,
            icmp_code=shape.icmp_code,
            cidr=cidr,
            peer_group_id=peer,
        )
        if any(_same(rule, r) for r in [*existing, *made]):
            what = cidr or next(p.name for p in peers if p.id == peer)
            raise InvalidParameter(f"Security group {group.name} already has this {direction} rule for {what}")
        made.append(rule)
    for rule in made:
        ctx.session.add(rule)
    ctx.session.flush()
    return group, made


def _same(a: SecurityGroupRule, b: SecurityGroupRule) -> bool:
    keys = ("protocol", "start_port", "end_port", "icmp_type", "icmp_code", "cidr", "peer_group_id")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def revoke(ctx: CallContext, rule_id: str, direction: str) -> SecurityGroup:
    rule = ctx.session.get(SecurityGroupRule, rule_id)
    if rule is None or rule.direction != direction:
        raise InvalidParameter(f"Unable to find {direction} rule with id={rule_id}")
    try:
        group = get_group(ctx, rule.group_id, "id")
    except InvalidParameter:  # another account's rule: as unknown as a rule that does not exist
        raise InvalidParameter(f"Unable to find {direction} rule with id={rule_id}") from None
    ctx.session.delete(rule)
    ctx.session.flush()
    return group


def rules_of(session: Session, group_id: str) -> list[SecurityGroupRule]:
    return list(
        session.scalars(
            select(SecurityGroupRule)
            .where(SecurityGroupRule.group_id == group_id)
            .order_by(SecurityGroupRule.created, SecurityGroupRule.id)
        )
    )


# --- the groups of a VM -------------------------------------------------------------------------------


def groups_for_deploy(ctx: CallContext, args: dict[str, Any], zone: Zone, owner: Account) -> list[SecurityGroup]:
    """deployVirtualMachine's securitygroupids / securitygroupnames, the default group when neither is
    given; in a zone without security groups, none (and asking for some is refused)."""
    ids, names = args.get("securitygroupids") or [], args.get("securitygroupnames") or []
    if not zone.security_group_enabled:
        if ids or names:
            raise InvalidParameter(
                "Can't create vm with security groups; security group feature is not enabled in this zone"
            )
        return []
    if ids and names:
        raise InvalidParameter("Parameters securitygroupids and securitygroupnames cannot both be given")
    groups: list[SecurityGroup] = []
    for gid in ids:
        group = get_group(ctx, gid, "securitygroupids")
        if group.account_id != owner.id:
            raise InvalidParameter(f"Security group {group.name} (securitygroupids) belongs to another account")
        groups.append(group)
    for name in names:
        found = ensure_default(ctx.session, owner) if name == DEFAULT else _by_name(ctx.session, owner.id, name)
        if found is None:
            raise InvalidParameter(f"Unable to find security group {name} (securitygroupnames) of account {owner.name}")
        groups.append(found)
    if not groups:
        groups = [ensure_default(ctx.session, owner)]
    unique = {g.id: g for g in groups}
    return list(unique.values())


def attach(session: Session, vm: VirtualMachine, groups: list[SecurityGroup]) -> None:
    for group in groups:
        session.add(VmSecurityGroup(vm_id=vm.id, group_id=group.id))
    session.flush()


def set_groups(session: Session, vm: VirtualMachine, groups: list[SecurityGroup]) -> None:
    """The VM's groups become exactly `groups` (updateVirtualMachine, stopped VMs)."""
    for row in session.scalars(select(VmSecurityGroup).where(VmSecurityGroup.vm_id == vm.id)):
        session.delete(row)
    session.flush()
    attach(session, vm, groups)


def vm_groups(session: Session, vm_id: str) -> list[SecurityGroup]:
    return list(
        session.scalars(
            select(SecurityGroup)
            .join(VmSecurityGroup, VmSecurityGroup.group_id == SecurityGroup.id)
            .where(VmSecurityGroup.vm_id == vm_id)
            .order_by(SecurityGroup.name)
        )
    )


def forget_vm(session: Session, vm_id: str) -> None:
    """An expunged VM leaves its groups (their member sets lose its addresses)."""
    for row in session.scalars(select(VmSecurityGroup).where(VmSecurityGroup.vm_id == vm_id)):
        session.delete(row)


def any_security_group_zone(session: Session) -> bool:
    """listCapabilities' securitygroupsenabled: some zone has security groups."""
    found = session.scalar(select(Zone.id).where(Zone.security_group_enabled.is_(True), Zone.removed.is_(None)))
    return found is not None
