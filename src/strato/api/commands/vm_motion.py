"""Moving VMs between hosts (and a stopped VM's disks to another pool): findHostsForMigration,
migrateVirtualMachine, migrateVirtualMachineWithVolume. Root admins only, as in CloudStack."""

from __future__ import annotations

from typing import Any

from strato.api import views
from strato.api.commands.motion import BANDWIDTH
from strato.api.envelope import AsyncStarted, Listing
from strato.api.params import Param, T
from strato.api.registry import ADMIN, Kind, api
from strato.services.core.context import CallContext
from strato.services.motion import find_hosts, migrate_vm

VM_ID = Param("virtualmachineid", T.UUID, "The ID of the virtual machine", required=True)


@api(
    "findHostsForMigration",
    "Finds hosts suitable for migrating a virtual machine: every other host of its zone, with "
    "suitableformigration, requiresStorageMotion (its disks must move: use migrateVirtualMachineWithVolume) "
    "and (Strato) reasonunsuitable",
    kind=Kind.LIST,
    response="host",
    access=ADMIN,
    params=(Param("id", T.UUID, "Find hosts to which this VM can be migrated", required=True),),
)
def find_hosts_for_migration(ctx: CallContext, args: dict[str, Any]) -> Listing:
    found = find_hosts.find_hosts(ctx, {"virtualmachineid": args["id"], "keyword": args.get("keyword")})
    rows = [
        {**views.host(ctx.session, c.host), **find_hosts.capacity_fields(ctx, c.host), **find_hosts.migration_fields(c)}
        for c in found
    ]
    return Listing(rows, len(rows))


@api(
    "migrateVirtualMachine",
    "Attempts to migrate a VM to a different host (live, its disks staying on pools both hosts reach) or, "
    "with storageid, a stopped VM's disks to another storage pool",
    kind=Kind.ASYNC,
    access=ADMIN,
    event="VM.MIGRATE",
    params=(
        VM_ID,
        Param("hostid", T.UUID, "Destination host for the running VM"),
        Param("storageid", T.UUID, "Destination storage pool for the stopped VM's disks"),
        Param("autoselect", T.BOOLEAN, "Ignored: give hostid or storageid"),
        BANDWIDTH,
    ),
)
def migrate_virtual_machine(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(migrate_vm.migrate(ctx, args), args["virtualmachineid"])


@api(
    "migrateVirtualMachineWithVolume",
    "Attempts to migrate a running VM with its volumes to a different host, in its cluster or another: "
    "each listed volume to the pool named for it (a pool local to the target host included)",
    kind=Kind.ASYNC,
    access=ADMIN,
    event="VM.MIGRATE",
    params=(
        VM_ID,
        Param("hostid", T.UUID, "Destination host for the VM", required=True),
        Param(
            "migrateto",
            T.MAP,
            "Volume to pool mapping: migrateto[i].volume (a volume of the VM) and migrateto[i].pool (its new "
            "pool); unlisted volumes stay where they are, which the target host must reach",
            max_length=64,
        ),
        BANDWIDTH,
    ),
)
def migrate_virtual_machine_with_volume(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(migrate_vm.migrate_with_volume(ctx, args), args["virtualmachineid"])
