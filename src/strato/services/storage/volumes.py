"""Volumes: create (offering or size, a pool chosen or allocated), attach and detach on stopped and
running VMs (hot-plug), resize, delete."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from strato.db.models import Account, DiskOffering, StoragePool, VirtualMachine, Volume, Zone
from strato.errors import InvalidParameter, NotFound, PermissionDenied
from strato.services.core import jobs, limits
from strato.services.core.access import get_owned, get_vm, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live
from strato.services.core.settings import capability_for
from strato.services.core.states import require_vm_state, volume_to
from strato.services.identity.identity import find_account
from strato.units import GIB


def get_volume(ctx: CallContext, volume_id: str, param: str = "id") -> Volume:
    """A volume the caller may act on."""
    found: Volume = get_owned(ctx, Volume, volume_id, "volume", param)
    return found


def _submit(ctx: CallContext, kind: str, cmd: str, vol: Volume, vm_id: str | None = None, **params: Any) -> str:
    resources = [f"volume:{vol.id}"] + ([f"vm:{vm_id}"] if vm_id else [])
    params = {"volume_id": vol.id, "vm_id": vm_id, **params}
    return jobs.submit(ctx, kind, cmd, params, resources, "Volume", vol.id)


def create(ctx: CallContext, args: dict[str, Any]) -> tuple[Volume, str]:
    """createVolume: checks offering, size and limits and queues the job."""
    owner = find_account(ctx, args["account"], args.get("domainid")) if args.get("account") else ctx.account
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid") if args.get("virtualmachineid") else None
    zone_id = args.get("zoneid") or (vm.zone_id if vm else None)
    if not zone_id:
        raise InvalidParameter("Parameter zoneid is required (or virtualmachineid)")
    zone = get_live(ctx.session, Zone, zone_id, "zone", "zoneid")
    if not args.get("diskofferingid"):
        raise InvalidParameter("Parameter diskofferingid is required (a custom-size offering takes size in GiB)")
    offering = get_live(ctx.session, DiskOffering, args["diskofferingid"], "disk offering", "diskofferingid")
    size = offering.disk_size_bytes
    if offering.customized:
        if not args.get("size"):
            raise InvalidParameter(f"Disk offering {offering.name} has a custom size: give size in GiB")
        size = args["size"] * GIB
    elif args.get("size"):
        raise InvalidParameter(f"Disk offering {offering.name} has a fixed size; size may not be given")
    pool_id = args.get("storageid")
    if pool_id:
        if not ctx.is_root_admin:
            raise PermissionDenied("Only admins may choose a storage pool (storageid)")
        pool = get_live(ctx.session, StoragePool, pool_id, "storage pool", "storageid")
        if pool.zone_id != zone.id:
            raise InvalidParameter(f"Storage pool {pool.name} is not in zone {zone.name}")
    limits.check(ctx.session, owner, volumes=1, storage_bytes=size)
    if vm is not None:
        _check_attachable(ctx, vm)
    vol = Volume(
        name=args.get("name") or "",
        account_id=owner.id,
        domain_id=owner.domain_id,
        zone_id=zone.id,
        volume_type="DATADISK",
        size=size,
        disk_offering_id=offering.id,
        state="Allocated",
        provisioning_type=offering.provisioning_type,
        requested_pool_id=pool_id,
    )
    ctx.session.add(vol)
    ctx.session.flush()
    vol.name = vol.name or f"DATA-{vol.id[:8]}"
    job_id = _submit(
        ctx,
        "volume.create",
        "createVolume",
        vol,
        vm.id if vm else None,
        tags=[t for t in (offering.tags or "").split(",") if t],
        storage_type=offering.storage_type,
    )
    return vol, job_id


def _check_attachable(ctx: CallContext, vm: VirtualMachine) -> None:
    require_vm_state(vm, "Running", "Stopped", action="attach a volume to")
    count = (
        ctx.session.scalar(
            select(func.count())
            .select_from(Volume)
            .where(Volume.vm_id == vm.id, Volume.removed.is_(None), Volume.volume_type == "DATADISK")
        )
        or 0
    )
    cap = capability_for(ctx.session, vm.hypervisor if vm.hypervisor in ("KVM", "Simulator") else "KVM")
    if count + 1 > cap.max_data_volumes_limit:
        raise InvalidParameter(
            f"VM {vm.name} already has {count} data disks; the hypervisor's limit "
            f"(maxdatavolumeslimit) is {cap.max_data_volumes_limit}"
        )


def next_device_id(ctx: CallContext, vm: VirtualMachine) -> int:
    """The first free device id of a VM (0 is the root disk)."""
    used = {
        v.device_id for v in ctx.session.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None)))
    }
    n = 1
    while n in used:
        n += 1
    return n


def attach(ctx: CallContext, args: dict[str, Any]) -> str:
    """attachVolume: checks the volume, the VM and the data volume limit and queues the job."""
    vol = get_volume(ctx, args["id"])
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    if vol.vm_id:
        raise InvalidParameter(f"Volume {vol.name} is already attached to a VM")
    if vol.state != "Ready":
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only Ready volumes can be attached")
    if vol.account_id != vm.account_id:
        raise PermissionDenied("A volume can only be attached to a VM of the same account")
    if vol.zone_id != vm.zone_id:
        raise InvalidParameter(f"Volume {vol.name} is in another zone than VM {vm.name}")
    _check_attachable(ctx, vm)
    device_id = args.get("deviceid")
    if device_id is not None:
        if device_id < 1:
            raise InvalidParameter("Parameter deviceid must be 1 or more (0 is the root disk)")
        taken = ctx.session.scalar(
            select(Volume).where(Volume.vm_id == vm.id, Volume.device_id == device_id, Volume.removed.is_(None))
        )
        if taken is not None:
            raise InvalidParameter(f"Device id {device_id} is in use by volume {taken.name}")
    else:
        device_id = next_device_id(ctx, vm)
    return _submit(ctx, "volume.attach", "attachVolume", vol, vm.id, device_id=device_id)


def detach(ctx: CallContext, args: dict[str, Any]) -> str:
    """detachVolume: a data volume, named by id or by VM and device id; queues the job."""
    if args.get("id"):
        vol = get_volume(ctx, args["id"])
    elif args.get("virtualmachineid") and args.get("deviceid") is not None:
        vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
        found = ctx.session.scalar(
            select(Volume).where(Volume.vm_id == vm.id, Volume.device_id == args["deviceid"], Volume.removed.is_(None))
        )
        if found is None:
            raise NotFound(f"VM {vm.name} has no volume at device id {args['deviceid']}")
        vol = found
    else:
        raise InvalidParameter("Give id, or virtualmachineid with deviceid")
    if vol.volume_type == "ROOT":
        raise InvalidParameter(f"Volume {vol.name} is the root disk of its VM; a root disk cannot be detached")
    if not vol.vm_id:
        raise InvalidParameter(f"Volume {vol.name} is not attached to any VM")
    vm = get_vm(ctx, vol.vm_id)
    require_vm_state(vm, "Running", "Stopped", action="detach a volume from")
    return _submit(ctx, "volume.detach", "detachVolume", vol, vm.id)


def resize(ctx: CallContext, args: dict[str, Any]) -> str:
    """resizeVolume: checks the new size (never smaller: data would be lost) and the limits, and queues the job."""
    vol = get_volume(ctx, args["id"])
    if vol.state != "Ready":
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only Ready volumes can be resized")
    size, offering_id = vol.size, None
    if args.get("diskofferingid"):
        offering = get_live(ctx.session, DiskOffering, args["diskofferingid"], "disk offering", "diskofferingid")
        size = offering.disk_size_bytes if not offering.customized else size
        if offering.customized:
            if not args.get("size"):
                raise InvalidParameter("A custom-size disk offering needs size (GiB)")
            size = args["size"] * GIB
        offering_id = offering.id  # recorded by the job once the disk has grown
    elif args.get("size"):
        size = args["size"] * GIB
    else:
        raise InvalidParameter("Give size (GiB) or diskofferingid")
    if size < vol.size:
        raise InvalidParameter(
            f"Volume {vol.name} is {vol.size / GIB:.1f} GiB; shrinking to {size / GIB:.1f} GiB "
            "is not supported (data would be lost)"
        )
    owner = ctx.session.get(Account, vol.account_id)
    assert owner is not None
    limits.check(ctx.session, owner, storage_bytes=size - vol.size)
    vm_id = vol.vm_id
    if vm_id:
        vm = get_vm(ctx, vm_id)
        require_vm_state(vm, "Running", "Stopped", action="resize a volume of")
    return _submit(ctx, "volume.resize", "resizeVolume", vol, vm_id, size=size, offering_id=offering_id)


def delete(ctx: CallContext, args: dict[str, Any]) -> None:
    """deleteVolume: a detached volume; queues the removal of its files."""
    vol = get_volume(ctx, args["id"])
    if vol.vm_id:
        raise InvalidParameter(f"Volume {vol.name} is attached to a VM; detach it before deleting it")
    if vol.state not in ("Ready", "Allocated", "Destroy"):
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; it cannot be deleted now")
    volume_to(vol, "Destroy")
    _submit(ctx, "volume.delete", "deleteVolume", vol)


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
    return run_page(ctx.session, q, page, (Volume.name,), (Volume.created, Volume.device_id))
