"""Resource limits (CloudStack's resource types 0 VMs, 1 public IPs, 2 volumes, 3 snapshots, 6 isolated
networks, 10 primary storage GiB, and Strato's 14 VM snapshots), per account and per domain: a default
from the max.account.* / max.domain.* settings, overridden per account or domain. A domain's limit caps
its whole subtree; ROOT's is always unlimited."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from strato.db.models import (
    Account,
    Domain,
    Network,
    PublicIpAddress,
    ResourceLimit,
    Snapshot,
    VirtualMachine,
    VMSnapshot,
    Volume,
)
from strato.db.models.identity import ACCOUNT_TYPE_ADMIN
from strato.errors import ResourceLimitExceeded
from strato.services.core import settings
from strato.units import GIB

USER_VM, PUBLIC_IP, VOLUME, SNAPSHOT, NETWORK, PRIMARY_STORAGE, VM_SNAPSHOT = 0, 1, 2, 3, 6, 10, 14
"""SNAPSHOT counts volume snapshots (CloudStack's type 3); VM_SNAPSHOT is Strato's addition (CloudStack has
no limit type for VM snapshots)."""
NAMES = {
    USER_VM: "user_vm",
    PUBLIC_IP: "public_ip",
    VOLUME: "volume",
    SNAPSHOT: "snapshot",
    NETWORK: "network",
    PRIMARY_STORAGE: "primary_storage",
    VM_SNAPSHOT: "vm_snapshot",
}
DEFAULTS = {
    USER_VM: "max.account.user.vms",
    PUBLIC_IP: "max.account.public.ips",
    VOLUME: "max.account.volumes",
    SNAPSHOT: "max.account.snapshots",
    NETWORK: "max.account.networks",
    PRIMARY_STORAGE: "max.account.primary.storage",
    VM_SNAPSHOT: "max.account.vm.snapshots",
}
DOMAIN_DEFAULTS = {
    USER_VM: "max.domain.user.vms",
    PUBLIC_IP: "max.domain.public.ips",
    VOLUME: "max.domain.volumes",
    SNAPSHOT: "max.domain.snapshots",
    NETWORK: "max.domain.networks",
    PRIMARY_STORAGE: "max.domain.primary.storage",
    VM_SNAPSHOT: "max.domain.vm.snapshots",
}


def _account_row(session: Session, account_id: str, resource_type: int) -> ResourceLimit | None:
    return session.scalar(
        select(ResourceLimit).where(
            ResourceLimit.account_id == account_id,
            ResourceLimit.resource_type == resource_type,
            ResourceLimit.removed.is_(None),
        )
    )


def _domain_row(session: Session, domain_id: str, resource_type: int) -> ResourceLimit | None:
    return session.scalar(
        select(ResourceLimit).where(
            ResourceLimit.domain_id == domain_id,
            ResourceLimit.account_id.is_(None),
            ResourceLimit.resource_type == resource_type,
            ResourceLimit.removed.is_(None),
        )
    )


def limit(session: Session, account: Account, resource_type: int) -> int:
    """The account's maximum of a resource type (-1: unlimited, always for root admins)."""
    if account.type == ACCOUNT_TYPE_ADMIN:
        return -1
    row = _account_row(session, account.id, resource_type)
    return row.max if row is not None else int(settings.get(session, DEFAULTS[resource_type]))


def domain_limit(session: Session, domain: Domain, resource_type: int) -> int:
    """The domain's maximum for all accounts of its subtree together (-1: unlimited, always for ROOT)."""
    if domain.parent_id is None:
        return -1
    row = _domain_row(session, domain.id, resource_type)
    return row.max if row is not None else int(settings.get(session, DOMAIN_DEFAULTS[resource_type]))


def _count(resource_type: int, owners: ColumnElement[bool] | None = None) -> Select[Any]:
    """What accounts hold of a resource type now; `owners` is a condition on an account_id column."""
    if resource_type == USER_VM:
        q = (
            select(func.count())
            .select_from(VirtualMachine)
            .where(VirtualMachine.removed.is_(None), VirtualMachine.state.not_in(("Destroyed", "Expunging", "Error")))
        )
    elif resource_type == VM_SNAPSHOT:
        q = (
            select(func.count())
            .select_from(VMSnapshot)
            .where(VMSnapshot.removed.is_(None), VMSnapshot.hidden.is_(False), VMSnapshot.state != "Error")
        )
    elif resource_type == SNAPSHOT:
        # As CloudStack's resource count: every snapshot not deleted, except those that failed.
        q = select(func.count()).select_from(Snapshot).where(Snapshot.removed.is_(None), Snapshot.state != "Error")
    elif resource_type == VOLUME:
        q = select(func.count()).select_from(Volume).where(Volume.removed.is_(None))
    elif resource_type == PUBLIC_IP:
        # As CloudStack's count: every address an account holds, its networks' source NAT ones included.
        q = select(func.count()).select_from(PublicIpAddress).where(PublicIpAddress.removed.is_(None))
    elif resource_type == NETWORK:
        # Isolated networks only: shared ones are the zone's, made by an admin for every account.
        q = select(func.count()).select_from(Network).where(Network.removed.is_(None), Network.guest_type == "Isolated")
    else:
        q = select(func.coalesce(func.sum(Volume.size), 0)).where(Volume.removed.is_(None))
    return q if owners is None else q.where(owners)


def _owner_column(resource_type: int) -> Any:
    columns = {
        USER_VM: VirtualMachine.account_id,
        VM_SNAPSHOT: VMSnapshot.account_id,
        SNAPSHOT: Snapshot.account_id,
        PUBLIC_IP: PublicIpAddress.account_id,
        NETWORK: Network.account_id,
    }
    return columns.get(resource_type, Volume.account_id)


def usage(session: Session, account_id: str, resource_type: int) -> int:
    """What the account holds of a resource type now, counted from the database."""
    return int(session.scalar(_count(resource_type, _owner_column(resource_type) == account_id)) or 0)


def domain_usage(session: Session, domain: Domain, resource_type: int) -> int:
    """What every account of the domain and its subdomains holds together."""
    accounts = select(Account.id).join(Domain, Domain.id == Account.domain_id)
    accounts = accounts.where((Domain.path == domain.path) | Domain.path.like(domain.path + "/%"))
    return int(session.scalar(_count(resource_type, _owner_column(resource_type).in_(accounts))) or 0)


def usage_by_account(session: Session, account_ids: Collection[str], resource_type: int) -> dict[str, int]:
    """The usage of many accounts in one query (a page of listAccounts)."""
    col = _owner_column(resource_type)
    q = _count(resource_type, col.in_(list(account_ids))).add_columns(col).group_by(col)
    return {str(owner): int(n or 0) for n, owner in session.execute(q)}


def _exceeded(rtype: int, who: str, cap: int, used: int, extra: int) -> ResourceLimitExceeded | None:
    if cap < 0:
        return None
    if rtype == PRIMARY_STORAGE:
        if used + extra > cap * GIB:
            return ResourceLimitExceeded(
                f"Maximum amount of resources of type primary_storage for {who} has exceeded: "
                f"limit {cap} GiB, in use {used / GIB:.1f} GiB, requested {extra / GIB:.1f} GiB"
            )
    elif used + extra > cap:
        return ResourceLimitExceeded(
            f"Maximum number of resources of type {NAMES[rtype]} for {who} has exceeded: "
            f"limit {cap}, in use {used}, requested {extra}"
        )
    return None


def check(
    session: Session,
    account: Account,
    vms: int = 0,
    volumes: int = 0,
    storage_bytes: int = 0,
    vm_snapshots: int = 0,
    snapshots: int = 0,
    public_ips: int = 0,
    networks: int = 0,
    counted: bool = False,
) -> None:
    """Raises 532 naming the limit (the account's, or that of its domain or a parent domain) that the
    request would pass. `counted`: the requested resources already have their rows (so are in the counts)."""
    wanted = (
        (USER_VM, vms),
        (VOLUME, volumes),
        (SNAPSHOT, snapshots),
        (PRIMARY_STORAGE, storage_bytes),
        (VM_SNAPSHOT, vm_snapshots),
        (PUBLIC_IP, public_ips),
        (NETWORK, networks),
    )
    domains = _domain_line(session, account)
    for rtype, extra in wanted:
        if not extra:
            continue
        already = extra if counted else 0
        err = _exceeded(rtype, f"account {account.name}", limit(session, account, rtype),
                        usage(session, account.id, rtype) - already, extra)  # fmt: skip
        if err is None and account.type != ACCOUNT_TYPE_ADMIN:
            for d in domains:
                cap = domain_limit(session, d, rtype)
                if cap >= 0:
                    err = _exceeded(rtype, f"domain {d.name}", cap, domain_usage(session, d, rtype) - already, extra)
                if err is not None:
                    break
        if err is not None:
            raise err


def _domain_line(session: Session, account: Account) -> list[Domain]:
    """The account's domain and its parents up to (not including) ROOT, whose limits are always -1."""
    line: list[Domain] = []
    d = session.get(Domain, account.domain_id)
    while d is not None and d.parent_id is not None:
        line.append(d)
        d = session.get(Domain, d.parent_id)
    return line


def set_limit(session: Session, account: Account, resource_type: int, maximum: int) -> None:
    """updateResourceLimit: records the account's new maximum (-1 for unlimited)."""
    row = _account_row(session, account.id, resource_type)
    if row is None:
        session.add(
            ResourceLimit(account_id=account.id, domain_id=account.domain_id, resource_type=resource_type, max=maximum)
        )
    else:
        row.max = maximum


def set_domain_limit(session: Session, domain: Domain, resource_type: int, maximum: int) -> None:
    """updateResourceLimit with a domain and no account: the subtree's new maximum (-1 for unlimited)."""
    row = _domain_row(session, domain.id, resource_type)
    if row is None:
        session.add(ResourceLimit(account_id=None, domain_id=domain.id, resource_type=resource_type, max=maximum))
    else:
        row.max = maximum


Figures = dict[int, tuple[int, int]]
"""Per resource type: (maximum, in use); primary storage in bytes in use, GiB maximum."""


def account_figures(session: Session, accounts: Collection[Account]) -> dict[str, Figures]:
    """Limits and usage of many accounts in a fixed number of queries (a page of listAccounts)."""
    ids = [a.id for a in accounts]
    rows = session.scalars(
        select(ResourceLimit).where(ResourceLimit.account_id.in_(ids), ResourceLimit.removed.is_(None))
    )
    own = {(r.account_id, r.resource_type): r.max for r in rows}
    defaults = {t: int(settings.get(session, DEFAULTS[t])) for t in NAMES}
    used = {t: usage_by_account(session, ids, t) for t in NAMES}
    out: dict[str, Figures] = {}
    for a in accounts:
        out[a.id] = {
            t: (-1 if a.type == ACCOUNT_TYPE_ADMIN else own.get((a.id, t), defaults[t]), used[t].get(a.id, 0))
            for t in NAMES
        }
    return out


def domain_figures(session: Session, domains: Collection[Domain]) -> dict[str, Figures]:
    """Limits and subtree usage of many domains in a fixed number of queries (a page of listDomains)."""
    ids = [d.id for d in domains]
    rows = session.scalars(
        select(ResourceLimit).where(
            ResourceLimit.domain_id.in_(ids), ResourceLimit.account_id.is_(None), ResourceLimit.removed.is_(None)
        )
    )
    own = {(r.domain_id, r.resource_type): r.max for r in rows}
    defaults = {t: int(settings.get(session, DOMAIN_DEFAULTS[t])) for t in NAMES}
    paths = dict(session.execute(select(Account.id, Domain.path).join(Domain, Domain.id == Account.domain_id)).all())
    by_path: dict[int, dict[str, int]] = {}
    for t in NAMES:
        col = _owner_column(t)
        per_account = session.execute(_count(t).add_columns(col).group_by(col)).all()
        sums: dict[str, int] = {}
        for n, owner in per_account:
            path = paths.get(owner)
            if path is not None:
                sums[path] = sums.get(path, 0) + int(n or 0)
        by_path[t] = sums
    out: dict[str, Figures] = {}
    for d in domains:
        held = set().union(*(by_path[t].keys() for t in NAMES))
        inside = [p for p in held if p == d.path or p.startswith(d.path + "/")]
        out[d.id] = {
            t: (
                -1 if d.parent_id is None else own.get((d.id, t), defaults[t]),
                sum(by_path[t].get(p, 0) for p in inside),
            )
            for t in NAMES
        }
    return out
