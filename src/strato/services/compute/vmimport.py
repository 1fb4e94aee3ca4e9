"""importVm: a VM made from disk images already on a host, each copied onto a chosen or allocated pool."""

from __future__ import annotations

from typing import Any

from strato.db.models import Host, ServiceOffering, StoragePool, VirtualMachine, Volume, Zone
from strato.errors import InvalidParameter
from strato.services.core import jobs, limits
from strato.services.core.context import CallContext
from strato.services.core.lookup import get_live
from strato.services.offerings.offerings import compute_shape


def import_vm(ctx: CallContext, args: dict[str, Any]) -> tuple[VirtualMachine, str]:
    """importVm with importsource=local: disk images in a directory of a host, each onto a chosen pool."""
    if (args.get("importsource") or "local").lower() not in ("local", "shared"):
        raise InvalidParameter("Parameter importsource must be local (disk images on a host)")
    host = get_live(ctx.session, Host, args["hostid"], "host", "hostid")
    zone = get_live(ctx.session, Zone, args.get("zoneid") or host.zone_id, "zone", "zoneid")
    offering = get_live(
        ctx.session, ServiceOffering, args["serviceofferingid"], "service offering", "serviceofferingid"
    )
    details: dict[str, str] = {}
    for entry in args.get("details") or []:
        details.update(entry)
    cpus, speed, memory = compute_shape(ctx, offering, details)
    disks = [{"path": args["diskpath"], "pool_id": args.get("storageid")}]
    for n, entry in enumerate(args.get("datadisks") or []):
        if not entry.get("diskpath"):
            raise InvalidParameter(f"Parameter datadisks[{n}].diskpath is required")
        disks.append({"path": entry["diskpath"], "pool_id": entry.get("storageid")})
    for n, disk in enumerate(disks):
        path = disk["path"]
        if not path.startswith("/") or "/../" in path or path.endswith("/"):
            raise InvalidParameter(f"Disk path {path!r} must be an absolute file path on the host")
        if disk["pool_id"]:
            pool = get_live(
                ctx.session,
                StoragePool,
                disk["pool_id"],
                "storage pool",
                "storageid" if n == 0 else f"datadisks[{n - 1}].storageid",
            )
            if pool.zone_id != zone.id:
                raise InvalidParameter(f"Storage pool {pool.name} is not in zone {zone.name}")
    name = args["name"]
    vm = VirtualMachine(
        name=name,
        display_name=args.get("displayname") or name,
        instance_name="",
        account_id=ctx.account.id,
        domain_id=ctx.account.domain_id,
        zone_id=zone.id,
        service_offering_id=offering.id,
        cpu_number=cpus,
        cpu_speed=speed,
        memory_mib=memory,
        hypervisor=host.hypervisor,
        state="Stopped",
        last_host_id=host.id,
        details=details,
    )
    ctx.session.add(vm)
    ctx.session.flush()
    vm.instance_name = f"i-{vm.id}"
    limits.check(ctx.session, ctx.account, vms=1, volumes=len(disks))
    for device_id, disk in enumerate(disks):
        vol = Volume(
            name=f"{'ROOT' if device_id == 0 else 'DATA'}-{name}-{device_id}",
            account_id=ctx.account.id,
            domain_id=ctx.account.domain_id,
            zone_id=zone.id,
            vm_id=vm.id,
            device_id=device_id,
            volume_type="ROOT" if device_id == 0 else "DATADISK",
            state="Allocated",
            requested_pool_id=disk["pool_id"],
        )
        ctx.session.add(vol)
        ctx.session.flush()
        disk["volume_id"] = vol.id
    resources = [f"vm:{vm.id}", *(f"volume:{d['volume_id']}" for d in disks)]
    return vm, jobs.submit(
        ctx,
        "vm.import",
        "importVm",
        {"vm_id": vm.id, "host_id": host.id, "disks": disks},
        resources,
        "VirtualMachine",
        vm.id,
    )
