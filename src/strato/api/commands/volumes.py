"""Volumes: create (with Strato's pool choice), list, attach, detach, resize, delete."""

from __future__ import annotations

from typing import Any

from strato.api import views_compute as views
from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import TAGS_FILTER, Param, T
from strato.api.registry import Kind, api
from strato.services.core.context import CallContext
from strato.services.core.listing import Page
from strato.services.storage import attach_volume, create_volume, delete_volume, detach_volume, resize_volume, volumes


@api(
    "createVolume",
    "Creates a disk volume from a disk offering or a volume snapshot, on a chosen pool or one the allocator picks",
    kind=Kind.ASYNC,
    event="VOLUME.CREATE",
    params=(
        Param("name", T.STRING, "The name of the disk volume", max_length=255),
        Param("zoneid", T.UUID, "The ID of the availability zone"),
        Param("diskofferingid", T.UUID, "The ID of the disk offering"),
        Param("snapshotid", T.UUID, "The ID of the volume snapshot the volume is created from"),
        Param("size", T.LONG, "Size in GiB, for custom-size disk offerings", min_value=1),
        Param("storageid", T.UUID, "Strato: the storage pool of the volume (admins)"),
        Param("virtualmachineid", T.UUID, "The VM to attach the volume to once created"),
        Param("account", T.STRING, "The account of the volume (admins); with domainid", max_length=255),
        Param("domainid", T.UUID, "The domain of the account"),
    ),
)
def create(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    vol, job_id = create_volume.create(ctx, args)
    return AsyncStarted(job_id, vol.id)


@api(
    "listVolumes",
    "Lists all volumes",
    kind=Kind.LIST,
    response="volume",
    owned=True,
    params=(
        Param("id", T.UUID, "The ID of the disk volume"),
        Param("ids", T.LIST, "The IDs of the volumes", item_type=T.UUID),
        Param("name", T.STRING, "The name of the disk volume", max_length=255),
        Param("type", T.STRING, "The type of disk volume (ROOT or DATADISK)", choices=("ROOT", "DATADISK")),
        Param("state", T.STRING, "State of the volume", max_length=32),
        Param("virtualmachineid", T.UUID, "The ID of the virtual machine"),
        Param("zoneid", T.UUID, "The ID of the availability zone"),
        Param("storageid", T.UUID, "The ID of the storage pool"),
        Param("diskofferingid", T.UUID, "List volumes by disk offering"),
        Param("hostid", T.UUID, "List volumes of the VMs on a host (admins)"),
        TAGS_FILTER,
    ),
)
def list_volumes(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = volumes.list_volumes(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda v: views.volume(ctx.session, v)), total)


@api(
    "attachVolume",
    "Attaches a disk volume to a virtual machine (hot-plugged when it runs)",
    kind=Kind.ASYNC,
    event="VOLUME.ATTACH",
    params=(
        Param("id", T.UUID, "The ID of the disk volume", required=True),
        Param("virtualmachineid", T.UUID, "The ID of the virtual machine", required=True),
        Param("deviceid", T.LONG, "The device ID of the disk (1 or more)", min_value=1, max_value=63),
    ),
)
def attach(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(attach_volume.attach(ctx, args), args["id"])


@api(
    "detachVolume",
    "Detaches a disk volume from a virtual machine",
    kind=Kind.ASYNC,
    event="VOLUME.DETACH",
    params=(
        Param("id", T.UUID, "The ID of the disk volume"),
        Param("virtualmachineid", T.UUID, "The ID of the virtual machine (with deviceid)"),
        Param("deviceid", T.LONG, "The device ID on the virtual machine", min_value=0, max_value=63),
    ),
)
def detach(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(detach_volume.detach(ctx, args), args.get("id"))


@api(
    "resizeVolume",
    "Resizes a volume (grow only)",
    kind=Kind.ASYNC,
    event="VOLUME.RESIZE",
    params=(
        Param("id", T.UUID, "The ID of the disk volume", required=True),
        Param("size", T.LONG, "New volume size in GiB", min_value=1),
        Param("diskofferingid", T.UUID, "New disk offering"),
        Param("shrinkok", T.BOOLEAN, "Shrinking is refused whatever this says (data would be lost)"),
    ),
)
def resize(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(resize_volume.resize(ctx, args), args["id"])


@api(
    "deleteVolume",
    "Deletes a detached disk volume",
    kind=Kind.SUCCESS,
    event="VOLUME.DELETE",
    params=(Param("id", T.UUID, "The ID of the disk volume", required=True),),
)
def delete(ctx: CallContext, args: dict[str, Any]) -> None:
    delete_volume.delete(ctx, args)
