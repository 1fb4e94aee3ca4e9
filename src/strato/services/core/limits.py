"""Account resource limits (CloudStack's resource types 0 VMs, 2 volumes, 3 snapshots, 10 primary storage GiB):
a default from the max.account.* settings, overridden per account."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from strato.db.models import Account, ResourceLimit, Snapshot, VirtualMachine, VMSnapshot, Volume
from strato.db.models.identity import ACCOUNT_TYPE_ADMIN
from strato.errors import ResourceLimitExceeded
from strato.services.core import settings
from strato.units import GIB

USER_VM, VOLUME, SNAPSHOT, PRIMARY_STORAGE, VM_SNAPSHOT = 0, 2, 3, 10, 14
"""SNAPSHOT counts volume snapshots (CloudStack's type 3); VM_SNAPSHOT is Strato's addition (CloudStack has
no limit type for VM snapshots)."""
NAMES = {
    USER_VM: "user_vm",
    VOLUME: "volume",
    SNAPSHOT: "snapshot",
    PRIMARY_STORAGE: "primary_storage",
    VM_SNAPSHOT: "vm_snapshot",
}
DEFAULTS = {
    USER_VM: "max.account.user.vms",
    VOLUME: "max.account.volumes",
    SNAPSHOT: "max.account.snapshots",
    PRIMARY_STORAGE: "max.account.primary.storage",
    VM_SNAPSHOT: "max.account.vm.snapshots",
}


def limit(session: Session, account: Account, resource_type: int) -> int:
    """The account's maximum of a resource type (-1: unlimited, always for root admins)."""
    if account.type == ACCOUNT_TYPE_ADMIN:
        return -1
    row = session.scalar(
        select(ResourceLimit).where(
            ResourceLimit.account_id == account.id,
            ResourceLimit.resource_type == resource_type,
            ResourceLimit.removed.is_(None),
        )
    )
    return row.max if row is not None else int(settings.get(session, DEFAULTS[resource_type]))


def usage(session: Session, account_id: str, resource_type: int) -> int:
    """What the account holds of a resource type now, counted from the database."""
    if resource_type == USER_VM:
        q = (
            select(func.count())
            .select_from(VirtualMachine)
            .where(
                VirtualMachine.account_id == account_id,
                VirtualMachine.removed.is_(None),
                VirtualMachine.state.not_in(("Destroyed", "Expunging", "Error")),
            )
        )
    elif resource_type == VM_SNAPSHOT:
        q = (
            select(func.count())
            .select_from(VMSnapshot)
            .where(
                VMSnapshot.account_id == account_id,
                VMSnapshot.removed.is_(None),
                VMSnapshot.hidden.is_(False),
                VMSnapshot.state != "Error",
            )
        )
    elif resource_type == SNAPSHOT:
        # As CloudStack's resource count: every snapshot not deleted, except those that failed.
        q = (
            select(func.count())
            .select_from(Snapshot)
            .where(Snapshot.account_id == account_id, Snapshot.removed.is_(None), Snapshot.state != "Error")
        )
    elif resource_type == VOLUME:
        q = select(func.count()).select_from(Volume).where(Volume.account_id == account_id, Volume.removed.is_(None))
    else:
        q = select(func.coalesce(func.sum(Volume.size), 0)).where(
            Volume.account_id == account_id, Volume.removed.is_(None)
        )
    return int(session.scalar(q) or 0)


def check(
    session: Session,
    account: Account,
    vms: int = 0,
    volumes: int = 0,
    storage_bytes: int = 0,
    vm_snapshots: int = 0,
    snapshots: int = 0,
) -> None:
    """Raises 532 naming the limit that the request would pass."""
    wanted = (
        (USER_VM, vms),
        (VOLUME, volumes),
        (SNAPSHOT, snapshots),
        (PRIMARY_STORAGE, storage_bytes),
        (VM_SNAPSHOT, vm_snapshots),
    )
    for rtype, extra in wanted:
        if not extra:
            continue
        cap = limit(session, account, rtype)
        if cap < 0:
            continue
        used = usage(session, account.id, rtype)
        if rtype == PRIMARY_STORAGE:
            if used + extra > cap * GIB:
                raise ResourceLimitExceeded(
                    f"Maximum amount of resources of type primary_storage for account {account.name} has exceeded: "
                    f"limit {cap} GiB, in use {used / GIB:.1f} GiB, requested {extra / GIB:.1f} GiB"
                )
        elif used + extra > cap:
            raise ResourceLimitExceeded(
                f"Maximum number of resources of type {NAMES[rtype]} for account {account.name} has exceeded: "
                f"limit {cap}, in use {used}, requested {extra}"
            )


def set_limit(session: Session, account: Account, resource_type: int, maximum: int) -> None:
    """updateResourceLimit: records the account's new maximum (-1 for unlimited)."""
    row = session.scalar(
        select(ResourceLimit).where(
            ResourceLimit.account_id == account.id,
            ResourceLimit.resource_type == resource_type,
            ResourceLimit.removed.is_(None),
        )
    )
    if row is None:
        session.add(ResourceLimit(account_id=account.id, resource_type=resource_type, max=maximum))
    else:
        row.max = maximum
