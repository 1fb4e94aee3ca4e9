"""Virtual machines: deploy with a pool chosen per disk (or by the allocator), and the life cycle
(start, stop, reboot, destroy, recover, expunge, scale, update) through the VM state machine.

The API-time functions here check everything that can be checked at once and queue the job; the
jobs that touch hosts and files are in vm_jobs.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sqlalchemy import select

from strato.db.models import (
    Account,
    DiskOffering,
    Host,
    ServiceOffering,
    StoragePool,
    Template,
    VirtualMachine,
    Volume,
    Zone,
)
from strato.errors import InvalidParameter, InvalidState, PermissionDenied
from strato.protocol.client import AgentClientError
from strato.protocol.messages import GetVmStats, VmStats
from strato.services.core import jobs, limits
from strato.services.core.access import get_vm, owner_scope
from strato.services.core.agents import host_client
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live
from strato.services.core.settings import capability_for
from strato.services.core.states import require_vm_state, vm_to, volume_to
from strato.services.identity import sshkeys
from strato.services.identity.identity import find_account
from strato.services.images.templates import get_template
from strato.services.offerings.offerings import compute_shape
from strato.units import GIB

MAX_USER_DATA = 32768


def _owner(ctx: CallContext, args: dict[str, Any]) -> Account:
    if args.get("account"):
        return find_account(ctx, args["account"], args.get("domainid"))
    return ctx.account


def _admin_choice(ctx: CallContext, value: str | None, param: str) -> str | None:
    if value and not ctx.is_root_admin:
        raise PermissionDenied(f"Only admins may choose {param}: the allocator places resources for users")
    return value


def _pool_choice(ctx: CallContext, pool_id: str | None, param: str, zone_id: str) -> str | None:
    if not _admin_choice(ctx, pool_id, param):
        return None
    assert pool_id is not None
    pool = get_live(ctx.session, StoragePool, pool_id, "storage pool", param)
    if pool.zone_id != zone_id:
        raise InvalidParameter(f"Storage pool {pool.name} ({param}) is not in the VM's zone")
    return pool.id


def decode_user_data(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter("Parameter userdata must be base64 encoded") from None
    if len(data) > MAX_USER_DATA:
        raise InvalidParameter(f"Parameter userdata is {len(data)} bytes once decoded; the limit is {MAX_USER_DATA}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParameter("Parameter userdata must decode to UTF-8 text") from None


def _offering_size(ctx: CallContext, offering_id: str, size_gib: int | None, param: str) -> tuple[DiskOffering, int]:
    offering = get_live(ctx.session, DiskOffering, offering_id, "disk offering", param)
    if offering.customized:
        if not size_gib:
            raise InvalidParameter(f"Disk offering {offering.name} has a custom size: give a size in GiB with it")
        size = size_gib * GIB
        if offering.min_size_bytes and size < offering.min_size_bytes:
            raise InvalidParameter(f"Size {size_gib} GiB is below the offering's minimum")
        if offering.max_size_bytes and size > offering.max_size_bytes:
            raise InvalidParameter(f"Size {size_gib} GiB is above the offering's maximum")
        return offering, size
    return offering, offering.disk_size_bytes


def _tags(value: str | None) -> list[str]:
    return [t for t in (value or "").split(",") if t]


def _details(args: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in args.get("details") or []:
        out.update(entry)
    return out


def deploy(ctx: CallContext, args: dict[str, Any]) -> tuple[VirtualMachine, str]:
    """Creates the VM and its volume rows and queues the deploy job; returns (vm, job id)."""
    owner = _owner(ctx, args)
    zone = get_live(ctx.session, Zone, args["zoneid"], "zone", "zoneid")
    if zone.allocation_state != "Enabled" and not ctx.is_root_admin:
        raise InvalidParameter(f"Zone {zone.name} is disabled")
    offering = get_live(
        ctx.session, ServiceOffering, args["serviceofferingid"], "service offering", "serviceofferingid"
    )

    template = get_template(ctx, args["templateid"], iso=False, param="templateid")
    if template.state != "Ready":
        raise InvalidParameter(f"Template {template.name} is not ready ({template.state}: {template.status_text})")
    if template.parent_id is not None:
        raise InvalidParameter(f"Template {template.name} is a data disk of another template; deploy from its parent")
    host_id = _admin_choice(ctx, args.get("hostid"), "hostid")
    if host_id:
        host = get_live(ctx.session, Host, host_id, "host", "hostid")
        if host.zone_id != zone.id:
            raise InvalidParameter(f"Host {host.name} is not in zone {zone.name}")
    details = _details(args)
    cpus, speed, memory = compute_shape(ctx, offering, details)
    storage_type = offering.storage_type
    disks: list[dict[str, Any]] = []
    root_size = max(template.virtual_size, offering.root_disk_size_bytes or 0)
    if args.get("rootdisksize"):
        wanted = args["rootdisksize"] * GIB
        if wanted < template.virtual_size:
            raise InvalidParameter(
                f"Parameter rootdisksize ({args['rootdisksize']} GiB) is smaller than the "
                f"template ({template.virtual_size / GIB:.2f} GiB)"
            )
        root_size = wanted
    disks.append(
        {
            "label": "ROOT",
            "type": "ROOT",
            "size": root_size,
            "tags": _tags(offering.tags),
            "storage_type": storage_type,
            "template_id": template.id,
            "pool_id": _pool_choice(ctx, args.get("rootdiskstorageid"), "rootdiskstorageid", zone.id),
        }
    )
    children = list(
        ctx.session.scalars(
            select(Template)
            .where(Template.parent_id == template.id, Template.removed.is_(None))
            .order_by(Template.disk_index)
        )
    )
    mapping = {
        m.get("datadisktemplateid"): m
        for m in (args.get("datadiskofferinglist") or []) + (args.get("datadisktemplatetodiskofferinglist") or [])
    }
    for key in mapping:
        if key not in {c.id for c in children}:
            raise InvalidParameter(
                f"datadiskofferinglist names {key}, which is not a data disk of template {template.name}"
            )
    for n, child in enumerate(children):
        entry = mapping.get(child.id, {})
        size, tags, dof = child.virtual_size, [], None
        if entry.get("diskofferingid"):
            dof, osize = _offering_size(ctx, entry["diskofferingid"], None, "datadiskofferinglist.diskofferingid")
            size, tags = max(size, osize), _tags(dof.tags)
        disks.append(
            {
                "label": f"data disk {child.disk_index} (from template)",
                "type": "DATADISK",
                "size": size,
                "tags": tags,
                "storage_type": dof.storage_type if dof else storage_type,
                "template_id": child.id,
                "disk_offering_id": dof.id if dof else None,
                "pool_id": _pool_choice(ctx, entry.get("storageid"), f"datadiskofferinglist[{n}].storageid", zone.id),
            }
        )
    extra: list[dict[str, Any]] = []
    if args.get("diskofferingid"):
        extra.append({"diskofferingid": args["diskofferingid"], "size": args.get("size")})
    extra.extend(args.get("datadisksdetails") or [])
    for n, entry in enumerate(extra):
        if not entry.get("diskofferingid"):
            raise InvalidParameter(f"datadisksdetails[{n}].diskofferingid is required")
        try:
            size_gib = int(entry["size"]) if entry.get("size") else None
        except ValueError:
            raise InvalidParameter(f"datadisksdetails[{n}].size must be a number of GiB") from None
        dof, size = _offering_size(ctx, entry["diskofferingid"], size_gib, f"datadisksdetails[{n}].diskofferingid")
        disks.append(
            {
                "label": f"data disk {len(disks)}",
                "type": "DATADISK",
                "size": size,
                "tags": _tags(dof.tags),
                "storage_type": dof.storage_type,
                "disk_offering_id": dof.id,
                "template_id": None,
                "pool_id": _pool_choice(ctx, entry.get("storageid"), f"datadisksdetails[{n}].storageid", zone.id),
            }
        )

    max_data = capability_for(ctx.session, "Simulator" if zone_hypervisor(ctx, zone.id) == "Simulator" else "KVM")
    if len(disks) - 1 > max_data.max_data_volumes_limit:
        raise InvalidParameter(
            f"The VM would have {len(disks) - 1} data disks; the hypervisor's limit "
            f"(maxdatavolumeslimit) is {max_data.max_data_volumes_limit}"
        )
    limits.check(ctx.session, owner, vms=1, volumes=len(disks), storage_bytes=sum(d["size"] for d in disks))
    name = args.get("name") or None
    if name is not None:
        _check_name(ctx, owner, name)
    keypair = public_key = None
    if args.get("keypair"):
        pair = sshkeys.find(ctx, args["keypair"], owner)
        keypair, public_key = pair.name, pair.public_key
    start = args.get("startvm", True) is not False
    vm = VirtualMachine(
        name=name or "",
        display_name=args.get("displayname") or "",
        instance_name="",
        account_id=owner.id,
        domain_id=owner.domain_id,
        zone_id=zone.id,
        service_offering_id=offering.id,
        template_id=template.id,
        cpu_number=cpus,
        cpu_speed=speed,
        memory_mib=memory,
        hypervisor=template.hypervisor,
        user_data=decode_user_data(args.get("userdata")),
        keypair=keypair,
        public_key=public_key,
        group=args.get("group"),
        state="Starting" if start else "Stopped",
        details=details,
    )
    ctx.session.add(vm)
    ctx.session.flush()
    vm.name = vm.name or f"VM-{vm.id}"
    vm.display_name = vm.display_name or vm.name
    vm.instance_name = f"i-{vm.id}"
    for device_id, disk in enumerate(disks):
        volume = Volume(
            name=f"{disk['type']}-{vm.name}" if device_id == 0 else f"DATA-{vm.name}-{device_id}",
            account_id=owner.id,
            domain_id=owner.domain_id,
            zone_id=zone.id,
            vm_id=vm.id,
            device_id=device_id,
            volume_type=disk["type"],
            size=disk["size"],
            disk_offering_id=disk.get("disk_offering_id"),
            template_id=disk.get("template_id"),
            state="Allocated",
            requested_pool_id=disk.get("pool_id"),
        )
        ctx.session.add(volume)
        ctx.session.flush()
        disk["volume_id"] = volume.id
    params = {
        "vm_id": vm.id,
        "disks": disks,
        "start": start,
        "host_id": host_id,
        "fullclone": bool(args.get("fullclone")),
    }
    resources = [f"vm:{vm.id}", *(f"volume:{d['volume_id']}" for d in disks)]
    return vm, jobs.submit(ctx, "vm.deploy", "deployVirtualMachine", params, resources, "VirtualMachine", vm.id)


def zone_hypervisor(ctx: CallContext, zone_id: str) -> str:
    host = ctx.session.scalar(select(Host).where(Host.zone_id == zone_id, Host.removed.is_(None)))
    return host.hypervisor if host is not None else "KVM"


def _check_name(ctx: CallContext, owner: Account, name: str, exclude: str | None = None) -> None:
    q = select(VirtualMachine).where(
        VirtualMachine.account_id == owner.id, VirtualMachine.name == name, VirtualMachine.removed.is_(None)
    )
    if exclude:
        q = q.where(VirtualMachine.id != exclude)
    if ctx.session.scalar(q) is not None:
        raise InvalidParameter(f"A VM named {name} already exists in account {owner.name}")


def list_vms(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[VirtualMachine], int]:
    q = select(VirtualMachine).where(
        VirtualMachine.removed.is_(None), owner_scope(ctx, args).condition(VirtualMachine.account_id)
    )
    for param, col in (
        ("id", VirtualMachine.id),
        ("name", VirtualMachine.name),
        ("zoneid", VirtualMachine.zone_id),
        ("hostid", VirtualMachine.host_id),
        ("templateid", VirtualMachine.template_id),
        ("serviceofferingid", VirtualMachine.service_offering_id),
    ):
        if args.get(param):
            if param == "hostid" and not ctx.is_root_admin:
                raise PermissionDenied("Only admins may list VMs by host")
            q = q.where(col == args[param])
    if args.get("state"):
        q = q.where(VirtualMachine.state == args["state"].capitalize())
    elif not ctx.is_admin:
        q = q.where(VirtualMachine.state != "Expunging")
    if args.get("ids"):
        q = q.where(VirtualMachine.id.in_(args["ids"]))
    return run_page(
        ctx.session,
        q,
        page,
        (VirtualMachine.name, VirtualMachine.display_name),
        (VirtualMachine.created, VirtualMachine.id),
    )


def _submit(
    ctx: CallContext, vm: VirtualMachine, kind: str, cmd: str, also_lock: tuple[str, ...] = (), **params: Any
) -> str:
    resources = [f"vm:{vm.id}", *also_lock]
    return jobs.submit(ctx, kind, cmd, {"vm_id": vm.id, **params}, resources, "VirtualMachine", vm.id)


def start(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    host_id = _admin_choice(ctx, args.get("hostid"), "hostid")
    require_vm_state(vm, "Stopped", action="start")
    vm_to(vm, "Starting")
    return _submit(ctx, vm, "vm.start", "startVirtualMachine", host_id=host_id)


def stop(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    require_vm_state(vm, "Running", "Stopped", action="stop")
    if vm.state == "Running":
        vm_to(vm, "Stopping")
    return _submit(ctx, vm, "vm.stop", "stopVirtualMachine", forced=bool(args.get("forced")))


def reboot(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    require_vm_state(vm, "Running", action="reboot")
    return _submit(ctx, vm, "vm.reboot", "rebootVirtualMachine")


def destroy(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    require_vm_state(vm, "Running", "Stopped", "Error", action="destroy")
    # CloudStack lets users expunge when allow.user.expunge.recover.vm is on; Strato always allows it.
    expunge = bool(args.get("expunge"))
    volume_ids = list(args.get("volumeids") or [])
    for vid in volume_ids:
        vol = ctx.session.get(Volume, vid)
        if vol is None or vol.vm_id != vm.id or vol.volume_type != "DATADISK":
            raise InvalidParameter(f"Volume {vid} (volumeids) is not a data disk of VM {vm.name}")
    return _submit(ctx, vm, "vm.destroy", "destroyVirtualMachine", expunge=expunge, volume_ids=volume_ids)


def recover(ctx: CallContext, args: dict[str, Any]) -> VirtualMachine:
    vm = get_vm(ctx, args["id"])
    require_vm_state(vm, "Destroyed", action="recover")
    if jobs.active_on(ctx.session, f"vm:{vm.id}"):
        raise InvalidState(f"VM {vm.name} has a job under way (e.g. its expunge); try again when it ends")
    # A destroyed VM does not count against the account's VM limit; it counts again once recovered.
    owner = ctx.session.get(Account, vm.account_id)
    assert owner is not None
    limits.check(ctx.session, owner, vms=1)
    vm_to(vm, "Stopped")
    vm.destroyed_at = None
    for vol in ctx.session.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None))):
        if vol.state == "Destroy":
            volume_to(vol, "Ready")
    return vm


def expunge(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    require_vm_state(vm, "Destroyed", "Error", "Stopped", action="expunge")
    return _submit(ctx, vm, "vm.expunge", "expungeVirtualMachine")


def scale(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    require_vm_state(vm, "Stopped", action="scale (only stopped VMs can be scaled)")
    offering = get_live(
        ctx.session, ServiceOffering, args["serviceofferingid"], "service offering", "serviceofferingid"
    )
    cpus, speed, memory = compute_shape(ctx, offering, _details(args))
    return _submit(
        ctx, vm, "vm.scale", "scaleVirtualMachine", offering_id=offering.id, cpus=cpus, speed=speed, memory=memory
    )


def update(ctx: CallContext, args: dict[str, Any]) -> VirtualMachine:
    vm = get_vm(ctx, args["id"])
    if args.get("name") and args["name"] != vm.name:
        require_vm_state(vm, "Stopped", action="rename")
        acct = ctx.session.get(Account, vm.account_id)
        assert acct is not None
        _check_name(ctx, acct, args["name"], exclude=vm.id)
        vm.name = args["name"]
    if args.get("displayname"):
        vm.display_name = args["displayname"]
    if args.get("group") is not None:
        vm.group = args["group"] or None
    if args.get("haenable") is not None:
        vm.ha_enabled = args["haenable"]
    if args.get("userdata") is not None:
        vm.user_data = decode_user_data(args["userdata"])
    if args.get("details"):
        vm.details = {**(vm.details or {}), **_details(args)}
    return vm


def attach_iso(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")

    iso = get_template(ctx, args["id"], iso=True)
    if iso.state != "Ready":
        raise InvalidParameter(f"ISO {iso.name} is not ready ({iso.state})")
    require_vm_state(vm, "Running", "Stopped", action="attach an ISO to")
    if vm.iso_id:
        raise InvalidParameter(f"VM {vm.name} already has an ISO attached; detach it first")
    return _submit(ctx, vm, "vm.iso", "attachIso", also_lock=(f"template:{iso.id}",), iso_id=iso.id)


def detach_iso(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    require_vm_state(vm, "Running", "Stopped", action="detach an ISO from")
    if not vm.iso_id:
        raise InvalidParameter(f"VM {vm.name} has no ISO attached")
    return _submit(ctx, vm, "vm.iso", "detachIso", iso_id=None)


def stats(ctx: CallContext, vm: VirtualMachine) -> VmStats | None:
    """The agent's statistics of a running VM (CPU time, memory, per-disk bytes and operations); None
    when the VM is not running or its host does not answer (a list must not fail for one host)."""
    if vm.state != "Running" or not vm.host_id:
        return None
    host = ctx.session.get(Host, vm.host_id)
    if host is None:
        return None
    try:
        return host_client(host).call(GetVmStats(name=vm.instance_name))
    except AgentClientError:
        return None
