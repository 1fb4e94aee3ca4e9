"""Volumes: looking them up and listing them. Each long operation on a volume is its own module:
create_volume, attach_volume, detach_volume, resize_volume, delete_volume."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Host, VirtualMachine, Volume
from strato.errors import NotFound, PermissionDenied
from strato.services.core.access import get_owned, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.tags import tagged

VOLUME_RESULT = "volume"
"""The job result type of the volume operations (queryAsyncJobResult answers the volume)."""


def live_volume(session: Session, volume_id: str) -> Volume:
    vol = session.get(Volume, volume_id)
    if vol is None or vol.removed is not None:
        raise NotFound(f"Unable to find volume with id {volume_id}")
    return vol


def live_vm(session: Session, vm_id: str) -> VirtualMachine:
    vm = session.get(VirtualMachine, vm_id)
    if vm is None or vm.removed is not None:
        raise NotFound(f"Unable to find VM with id {vm_id}")
    return vm


def running_host(session: Session, vm: VirtualMachine) -> Host | None:
    """The host a VM runs on (None when it is not running: its disks change in the database only)."""
    return session.get(Host, vm.host_id) if vm.state == "Running" and vm.host_id else None


def get_volume(ctx: CallContext, volume_id: str, param: str = "id") -> Volume:
    """A volume the caller may act on."""
    found: Volume = get_owned(ctx, Volume, volume_id, "volume", param)
    return found


def list_volumes(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[Volume], int]:
    """listVolumes: the volumes the caller may see, filtered and paged."""
    q = select(Volume).where(Volume.removed.is_(None), owner_scope(ctx, args).condition(Volume.account_id))
    for param, col in (
        ("id", Volume.id),
        ("name", Volume.name),
        ("zoneid", Volume.zone_id),
        ("virtualmachineid", Volume.vm_id),
        ("storageid", Volume.pool_id),
        ("diskofferingid", Volume.disk_offering_id),
    ):
        if args.get(param):
            q = q.where(col == args[param])
    if args.get("type"):
        q = q.where(Volume.volume_type == args["type"].upper())
    if args.get("state"):
        q = q.where(Volume.state == args["state"])
    if args.get("hostid"):
        if not ctx.is_root_admin:
            raise PermissionDenied("Only admins may list volumes by host")
        vm_ids = select(VirtualMachine.id).where(VirtualMachine.host_id == args["hostid"])
        q = q.where(Volume.vm_id.in_(vm_ids))
    if args.get("ids"):
        q = q.where(Volume.id.in_(args["ids"]))
    q = q.where(*tagged(Volume.id, args.get("tags")))
    return run_page(ctx.session, q, page, (Volume.name,), (Volume.created, Volume.device_id))
