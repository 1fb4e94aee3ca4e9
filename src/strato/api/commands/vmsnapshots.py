"""VM snapshots: create, list, revert to, delete (CloudStack's commands and responses)."""

from __future__ import annotations

from typing import Any

from strato.api import views_vmsnapshots as views
from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import TAGS_FILTER, Param, T
from strato.api.registry import Kind, api
from strato.services.compute import create_vm_snapshot, delete_vm_snapshot, hibernate, revert_vm_snapshot, vmsnap_tree
from strato.services.core.context import CallContext
from strato.services.core.listing import Page


@api(
    "createVMSnapshot",
    "Creates a snapshot of a VM's disks (and, running, of its memory)",
    kind=Kind.ASYNC,
    event="VMSNAPSHOT.CREATE",
    params=(
        Param("virtualmachineid", T.UUID, "The ID of the VM", required=True),
        Param("name", T.STRING, "The display name of the snapshot", max_length=255),
        Param("description", T.STRING, "The description of the snapshot", max_length=4096),
        Param("snapshotmemory", T.BOOLEAN, "Snapshot the memory too (running VMs only)"),
        Param("quiescevm", T.BOOLEAN, "Quiesce the VM: refused when true (there is no guest agent)"),
    ),
)
def create(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    snap, job_id = create_vm_snapshot.create(ctx, args)
    return AsyncStarted(job_id, snap.id)


@api(
    "listVMSnapshot",
    "Lists VM snapshots",
    kind=Kind.LIST,
    response="vmSnapshot",
    owned=True,
    params=(
        Param("virtualmachineid", T.UUID, "The ID of the VM"),
        Param("vmsnapshotid", T.UUID, "The ID of the VM snapshot"),
        Param("vmsnapshotids", T.LIST, "The IDs of the VM snapshots", item_type=T.UUID),
        Param("name", T.STRING, "Lists snapshots by name", max_length=255),
        Param("state", T.STRING, "State of the snapshot", max_length=32),
        TAGS_FILTER,
    ),
)
def list_snapshots(ctx: CallContext, args: dict[str, Any]) -> Listing:
    if args.get("vmsnapshotids"):
        args = {**args}
    rows, total = vmsnap_tree.list_snapshots(ctx, args, Page.from_args(args))
    if args.get("vmsnapshotids"):
        rows = [r for r in rows if r.id in set(args["vmsnapshotids"])]
        total = len(rows)
    return Listing(render_page(ctx.session, rows, lambda r: views.vm_snapshot(ctx.session, r)), total)


@api(
    "revertToVMSnapshot",
    "Reverts a VM to a VM snapshot",
    kind=Kind.ASYNC,
    event="VMSNAPSHOT.REVERTTO",
    params=(Param("vmsnapshotid", T.UUID, "The ID of the VM snapshot", required=True),),
)
def revert(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    snap, job_id = revert_vm_snapshot.revert(ctx, args)
    return AsyncStarted(job_id, snap.id)


@api(
    "deleteVMSnapshot",
    "Deletes a VM snapshot (its layers merge into its child's, or go)",
    kind=Kind.ASYNC,
    event="VMSNAPSHOT.DELETE",
    params=(Param("vmsnapshotid", T.UUID, "The ID of the VM snapshot", required=True),),
)
def delete(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(delete_vm_snapshot.delete(ctx, args), args["vmsnapshotid"])


@api(
    "hibernateVirtualMachine",
    "Hibernates a running VM: its memory goes to a file on its root disk's pool, it stops (state "
    "Hibernated); startVirtualMachine resumes it where it was",
    kind=Kind.ASYNC,
    event="VM.HIBERNATE",
    params=(Param("id", T.UUID, "The ID of the virtual machine", required=True),),
)
def hibernate_vm(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(hibernate.hibernate(ctx, args), args["id"])
