"""VMs: deployVirtualMachine (with Strato's per-disk pool choice), the life cycle, ISOs, importVm."""

from __future__ import annotations

from typing import Any

from strato.api import views_compute as views
from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import TAGS_FILTER, Param, T
from strato.api.registry import ADMIN, Kind, api
from strato.services.compute import deploy as deploy_op
from strato.services.compute import destroy as destroy_op
from strato.services.compute import iso, power, vmimport, vms
from strato.services.compute import scale as scale_op
from strato.services.core.context import CallContext
from strato.services.core.listing import Page

VM_ID = Param("id", T.UUID, "The ID of the virtual machine", required=True)
DETAILS = Param(
    "details",
    T.MAP,
    "Details: cpuNumber, cpuSpeed, memory (custom offerings); guestcommands (commands "
    "for Strato's tiny guest, through fw_cfg)",
    max_length=4096,
)


def _view(ctx: CallContext, vm: Any, with_stats: bool = False) -> dict[str, Any]:
    stats = vms.stats(ctx, vm) if with_stats else None
    return views.virtual_machine(ctx.session, vm, admin=ctx.is_root_admin, stats=stats)


@api(
    "deployVirtualMachine",
    "Creates and automatically starts a virtual machine based on a service offering, "
    "template and optional disks; each disk's pool can be chosen (Strato)",
    kind=Kind.ASYNC,
    event="VM.CREATE",
    params=(
        Param("zoneid", T.UUID, "Availability zone for the virtual machine", required=True),
        Param("serviceofferingid", T.UUID, "The ID of the service offering for the virtual machine", required=True),
        Param("templateid", T.UUID, "The ID of the template for the virtual machine", required=True),
        Param("name", T.STRING, "Host name for the virtual machine", max_length=63),
        Param("displayname", T.STRING, "An optional user generated name for the virtual machine", max_length=255),
        Param("group", T.STRING, "An optional group for the virtual machine", max_length=255),
        Param("hostid", T.UUID, "Destination host for the VM (admins only)"),
        Param("startvm", T.BOOLEAN, "True by default; false to deploy without starting"),
        Param("keypair", T.STRING, "Name of the SSH key pair used to login to the virtual machine", max_length=255),
        Param("userdata", T.STRING, "Optional base64-encoded user data, at most 32 KiB decoded", max_length=65536),
        Param("diskofferingid", T.UUID, "A data disk offering: one data disk of it is added"),
        Param("size", T.LONG, "The size in GiB of the data disk of a custom-size diskofferingid", min_value=1),
        Param("rootdisksize", T.LONG, "The root disk size in GiB: the template's disk is grown to it", min_value=1),
        Param("rootdiskstorageid", T.UUID, "Strato: the storage pool of the root disk (admins)"),
        Param(
            "datadisksdetails",
            T.MAP,
            "Strato: data disks, each with diskofferingid, size (GiB, custom "
            "offerings) and storageid (the pool, admins)",
            max_length=255,
        ),
        Param(
            "datadiskofferinglist",
            T.MAP,
            "Disks of a multi-disk template: datadisktemplateid with diskofferingid and (Strato) storageid",
            max_length=255,
        ),
        Param("datadisktemplatetodiskofferinglist", T.MAP, "CloudStack's name of datadiskofferinglist", max_length=255),
        Param("fullclone", T.BOOLEAN, "Strato: copy the template into the root disk instead of a linked clone"),
        Param("account", T.STRING, "The account of the VM (admins); must be used with domainid", max_length=255),
        Param("domainid", T.UUID, "The domain of the account"),
        Param("networkids", T.LIST, "The networks of the VM's NICs, the first one the default"),
        Param("ipaddress", T.STRING, "The address of the VM's NIC on its default network", max_length=64),
        Param("iptonetworklist", T.MAP, "NICs as networkid and ip pairs (instead of networkids)", max_length=255),
        Param("securitygroupids", T.LIST, "The VM's security groups (zones with security groups; default: default)"),
        Param("securitygroupnames", T.LIST, "The VM's security groups by name (instead of securitygroupids)"),
        DETAILS,
    ),
)
def deploy(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    vm, job_id = deploy_op.deploy(ctx, args)
    return AsyncStarted(job_id, vm.id)


@api(
    "listVirtualMachines",
    "List the virtual machines owned by the account",
    kind=Kind.LIST,
    response="virtualmachine",
    owned=True,
    params=(
        Param("id", T.UUID, "The ID of the virtual machine"),
        Param("ids", T.LIST, "The IDs of the virtual machines", item_type=T.UUID),
        Param("name", T.STRING, "Name of the virtual machine", max_length=255),
        Param("state", T.STRING, "State of the virtual machine", max_length=32),
        Param("zoneid", T.UUID, "The availability zone ID"),
        Param("hostid", T.UUID, "The host ID (admins)"),
        Param("templateid", T.UUID, "List VMs by template"),
        Param("serviceofferingid", T.UUID, "List VMs by service offering"),
        TAGS_FILTER,
        Param(
            "details",
            T.LIST,
            "Details to include: all, stats (asks the hosts for running VMs' disk I/O and CPU time), min, ...",
        ),
    ),
)
def list_vms(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = vms.list_vms(ctx, args, Page.from_args(args))
    with_stats = bool({"all", "stats"} & {d.lower() for d in args.get("details") or []})
    if with_stats:
        ctx.session.commit()  # the hosts are asked outside the database's lock
    return Listing(render_page(ctx.session, rows, lambda vm: _view(ctx, vm, with_stats)), total)


@api(
    "startVirtualMachine",
    "Starts a virtual machine",
    kind=Kind.ASYNC,
    event="VM.START",
    params=(VM_ID, Param("hostid", T.UUID, "Destination host to start the VM on (admins)")),
)
def start(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(power.start(ctx, args), args["id"])


@api(
    "stopVirtualMachine",
    "Stops a virtual machine",
    kind=Kind.ASYNC,
    event="VM.STOP",
    params=(VM_ID, Param("forced", T.BOOLEAN, "Force stop the VM (kill it) instead of an ACPI shutdown")),
)
def stop(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(power.stop(ctx, args), args["id"])


@api("rebootVirtualMachine", "Reboots a virtual machine", kind=Kind.ASYNC, event="VM.REBOOT", params=(VM_ID,))
def reboot(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(power.reboot(ctx, args), args["id"])


@api(
    "destroyVirtualMachine",
    "Destroys a virtual machine",
    kind=Kind.ASYNC,
    event="VM.DESTROY",
    params=(
        VM_ID,
        Param("expunge", T.BOOLEAN, "If true, expunge the VM at once"),
        Param("volumeids", T.LIST, "Data disks to destroy with the VM", item_type=T.UUID),
    ),
)
def destroy(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(destroy_op.destroy(ctx, args), args["id"])


@api(
    "recoverVirtualMachine",
    "Recovers a virtual machine that was destroyed",
    response="virtualmachine",
    event="VM.RECOVER",
    params=(VM_ID,),
)
def recover(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return _view(ctx, vms.recover(ctx, args))


@api(
    "expungeVirtualMachine",
    "Expunge a virtual machine: its root disk is deleted",
    kind=Kind.ASYNC,
    event="VM.EXPUNGE",
    params=(VM_ID,),
)
def expunge(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(destroy_op.expunge(ctx, args), args["id"])


@api(
    "scaleVirtualMachine",
    "Scales a stopped virtual machine to a new service offering",
    kind=Kind.ASYNC,
    event="VM.UPGRADE",
    params=(VM_ID, Param("serviceofferingid", T.UUID, "The ID of the new service offering", required=True), DETAILS),
)
def scale(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(scale_op.scale(ctx, args), args["id"])


@api(
    "updateVirtualMachine",
    "Updates properties of a virtual machine",
    response="virtualmachine",
    event="VM.UPDATE",
    params=(
        VM_ID,
        Param("name", T.STRING, "New host name of the VM (stopped VMs)", max_length=63),
        Param("displayname", T.STRING, "User generated name", max_length=255),
        Param("group", T.STRING, "Group of the virtual machine", max_length=255),
        Param("haenable", T.BOOLEAN, "True if high-availability is enabled for the VM"),
        Param("userdata", T.STRING, "Base64-encoded user data for the next config drive", max_length=65536),
        Param("securitygroupids", T.LIST, "The stopped VM's new security groups (zones with security groups)"),
        Param("securitygroupnames", T.LIST, "The stopped VM's new security groups by name"),
        DETAILS,
    ),
)
def update(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return _view(ctx, vms.update(ctx, args))


@api(
    "getVirtualMachineUserData",
    "Returns the user data of a virtual machine (base64-encoded)",
    response="virtualmachineuserdata",
    params=(Param("virtualmachineid", T.UUID, "The ID of the virtual machine", required=True),),
)
def get_user_data(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return vms.user_data(ctx, args)


ISO_PARAMS = (
    Param("id", T.UUID, "The ID of the ISO file", required=True),
    Param("virtualmachineid", T.UUID, "The ID of the virtual machine", required=True),
)


@api("attachIso", "Attaches an ISO to a virtual machine", kind=Kind.ASYNC, event="VM.ISO.ATTACH", params=ISO_PARAMS)
def attach_iso(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(iso.attach_iso(ctx, args), args["virtualmachineid"])


@api(
    "detachIso",
    "Detaches any ISO file (if any) currently attached to a virtual machine",
    kind=Kind.ASYNC,
    event="VM.ISO.DETACH",
    params=(Param("virtualmachineid", T.UUID, "The ID of the virtual machine", required=True),),
)
def detach_iso(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(iso.detach_iso(ctx, args), args["virtualmachineid"])


@api(
    "importVm",
    "Imports a VM from disk images on a host (importsource=local), each disk onto a chosen pool",
    kind=Kind.ASYNC,
    access=ADMIN,
    event="VM.IMPORT",
    params=(
        Param("name", T.STRING, "The name of the VM", required=True, max_length=63),
        Param("displayname", T.STRING, "The display name of the VM", max_length=255),
        Param("zoneid", T.UUID, "The zone of the VM (defaults to the host's)"),
        Param("hostid", T.UUID, "The host where the disk images are", required=True),
        Param("importsource", T.STRING, "Source of the import: local (files on the host)", max_length=32),
        Param("diskpath", T.STRING, "Path of the root disk image on the host", required=True, max_length=1024),
        Param("storageid", T.UUID, "The pool for the root disk (default: the allocator's choice)"),
        Param("datadisks", T.MAP, "Strato: data disks, each with diskpath and storageid", max_length=1024),
        Param("serviceofferingid", T.UUID, "The service offering of the VM", required=True),
        DETAILS,
    ),
)
def import_vm(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    vm, job_id = vmimport.import_vm(ctx, args)
    return AsyncStarted(job_id, vm.id)
