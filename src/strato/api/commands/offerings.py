"""Service and disk offerings."""

from __future__ import annotations

from typing import Any

from strato.api import views
from strato.api.envelope import Listing
from strato.api.pageload import render_page
from strato.api.params import Param, T
from strato.api.registry import DOMAIN_ADMINS, Kind, api
from strato.services.core.context import CallContext
from strato.services.core.listing import Page
from strato.services.offerings import offerings

NAME = Param("name", T.STRING, "The name of the offering", required=True, max_length=255)
DISPLAY = Param("displaytext", T.STRING, "The display text of the offering", max_length=4096)
DOMAIN = Param("domainid", T.UUID, "The domain the offering is restricted to (public if absent)")
STORAGE_TYPE = Param("storagetype", T.STRING, "The storage type: local or shared", choices=("local", "shared"))


@api(
    "createServiceOffering",
    "Creates a service offering",
    response="serviceoffering",
    access=DOMAIN_ADMINS,
    event="SERVICE.OFFERING.CREATE",
    params=(
        NAME,
        DISPLAY,
        DOMAIN,
        STORAGE_TYPE,
        Param("cpunumber", T.INTEGER, "The number of CPUs", min_value=1, max_value=64),
        Param("cpuspeed", T.INTEGER, "The CPU speed in MHz", min_value=1),
        Param("memory", T.INTEGER, "The memory in MiB", min_value=16),
        Param("customized", T.BOOLEAN, "Whether CPU and memory are chosen at deploy time"),
        Param("tags", T.STRING, "The storage tags for the root disk", max_length=1024),
        Param("hosttags", T.STRING, "The host tags", max_length=1024),
        Param("offerha", T.BOOLEAN, "Whether HA is offered"),
        Param("limitcpuuse", T.BOOLEAN, "Restrict the CPU use to the service offering value"),
        Param("rootdisksize", T.LONG, "The root disk size in GiB", min_value=1),
    ),
)
def create_service_offering(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.service_offering(ctx.session, offerings.create_service_offering(ctx, args))


@api(
    "listServiceOfferings",
    "Lists all available service offerings",
    kind=Kind.LIST,
    response="serviceoffering",
    params=(
        Param("id", T.UUID, "ID of the service offering"),
        Param("name", T.STRING, "Name of the service offering", max_length=255),
        Param("virtualmachineid", T.UUID, "List offerings a VM could be scaled to"),
    ),
)
def list_service_offerings(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = offerings.list_service_offerings(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda o: views.service_offering(ctx.session, o)), total)


@api(
    "updateServiceOffering",
    "Updates a service offering",
    response="serviceoffering",
    access=DOMAIN_ADMINS,
    event="SERVICE.OFFERING.EDIT",
    params=(
        Param("id", T.UUID, "The ID of the service offering", required=True),
        Param("name", T.STRING, "The name of the offering", max_length=255),
        DISPLAY,
        Param("storagetags", T.STRING, "Comma-separated storage tags", max_length=1024),
        Param("hosttags", T.STRING, "Comma-separated host tags", max_length=1024),
    ),
)
def update_service_offering(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.service_offering(ctx.session, offerings.update_service_offering(ctx, args))


@api(
    "deleteServiceOffering",
    "Deletes a service offering",
    kind=Kind.SUCCESS,
    access=DOMAIN_ADMINS,
    event="SERVICE.OFFERING.DELETE",
    params=(Param("id", T.UUID, "The ID of the service offering", required=True),),
)
def delete_service_offering(ctx: CallContext, args: dict[str, Any]) -> None:
    offerings.delete_service_offering(ctx, args["id"])


@api(
    "createDiskOffering",
    "Creates a disk offering",
    response="diskoffering",
    access=DOMAIN_ADMINS,
    event="DISK.OFFERING.CREATE",
    params=(
        NAME,
        DISPLAY,
        DOMAIN,
        STORAGE_TYPE,
        Param("disksize", T.LONG, "Size of the disk offering in GiB", min_value=1),
        Param("customized", T.BOOLEAN, "Whether the size is chosen when the disk is created"),
        Param("customizedminsize", T.LONG, "Minimum size in GiB of a custom-size disk", min_value=1),
        Param("customizedmaxsize", T.LONG, "Maximum size in GiB of a custom-size disk", min_value=1),
        Param(
            "tags",
            T.STRING,
            "Storage tags: disks of the offering go only to pools with them",
            max_length=1024,
        ),
        Param("provisioningtype", T.STRING, "thin, sparse or fat", choices=("thin", "sparse", "fat")),
    ),
)
def create_disk_offering(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.disk_offering(ctx.session, offerings.create_disk_offering(ctx, args))


@api(
    "listDiskOfferings",
    "Lists all available disk offerings",
    kind=Kind.LIST,
    response="diskoffering",
    params=(
        Param("id", T.UUID, "ID of the disk offering"),
        Param("name", T.STRING, "Name of the disk offering", max_length=255),
    ),
)
def list_disk_offerings(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = offerings.list_disk_offerings(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda o: views.disk_offering(ctx.session, o)), total)


@api(
    "deleteDiskOffering",
    "Deletes a disk offering",
    kind=Kind.SUCCESS,
    access=DOMAIN_ADMINS,
    event="DISK.OFFERING.DELETE",
    params=(Param("id", T.UUID, "ID of the disk offering", required=True),),
)
def delete_disk_offering(ctx: CallContext, args: dict[str, Any]) -> None:
    offerings.delete_disk_offering(ctx, args["id"])
