"""Primary storage pools and image stores."""

from __future__ import annotations

from typing import Any

from strato.api import views
from strato.api.commands.motion import BANDWIDTH
from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import Param, T
from strato.api.registry import ADMIN, Kind, api
from strato.errors import InvalidParameter
from strato.services.core import settings
from strato.services.core.context import CallContext
from strato.services.core.listing import Page
from strato.services.infra import hosts, storagepools
from strato.services.motion import pool_maintenance


def _pool_view(ctx: CallContext, pool: Any, factor: float | None = None) -> dict[str, Any]:
    if factor is None:
        factor = settings.get(ctx.session, "storage.overprovisioning.factor")
    return views.storage_pool(ctx.session, pool, factor)


@api(
    "createStoragePool",
    "Creates a storage pool",
    response="storagepool",
    access=ADMIN,
    event="STORAGE.POOL.CREATE",
    params=(
        Param("name", T.STRING, "The name for the storage pool", required=True, max_length=255),
        Param(
            "url",
            T.STRING,
            "The URL of the storage pool: file://localhost/<path> (scope host) or "
            "SharedMountPoint://localhost/<path> (a path mounted on every host)",
            required=True,
            max_length=1024,
        ),
        Param("zoneid", T.UUID, "The zone ID for the storage pool", required=True),
        Param("podid", T.UUID, "The pod ID for the storage pool"),
        Param("clusterid", T.UUID, "The cluster ID for the storage pool"),
        Param("hostid", T.UUID, "The host ID of a host-local pool (scope host; Strato addition)"),
        Param(
            "scope",
            T.STRING,
            "The scope of the storage: host, cluster or zone",
            choices=("host", "cluster", "zone"),
        ),
        Param("tags", T.STRING, "The storage tags for the pool, comma separated", max_length=1024),
        Param("capacitybytes", T.LONG, "Capacity in bytes to report instead of the file system's", min_value=0),
        Param("capacityiops", T.LONG, "IOPS the pool can deliver", min_value=0),
        Param("provider", T.STRING, "Storage provider: DefaultPrimary", max_length=255),
        Param("hypervisor", T.STRING, "Hypervisor type of the hosts in a zone-wide pool", max_length=32),
        Param("managed", T.BOOLEAN, "Whether the storage is managed (not supported; false)"),
    ),
)
def create_pool(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    if args.get("provider") and args["provider"].lower() not in {p.lower() for p in PROVIDERS["primary"]}:
        raise InvalidParameter(f"Parameter provider: no storage provider {args['provider']} (listStorageProviders)")
    pool = storagepools.create_pool(ctx, args)
    hosts.attach_pool(ctx.session, pool)
    return _pool_view(ctx, pool)


@api(
    "listStoragePools",
    "Lists storage pools",
    kind=Kind.LIST,
    response="storagepool",
    access=ADMIN,
    params=(
        Param("id", T.UUID, "The ID of the storage pool"),
        Param("name", T.STRING, "The name of the storage pool", max_length=255),
        Param("zoneid", T.UUID, "The zone ID of the storage pool"),
        Param("podid", T.UUID, "The pod ID of the storage pool"),
        Param("clusterid", T.UUID, "The cluster ID of the storage pool"),
        Param("hostid", T.UUID, "The host ID of a host-local pool"),
        Param("path", T.STRING, "The storage pool path", max_length=1024),
        Param("scope", T.STRING, "The scope of the storage pool", choices=("host", "cluster", "zone")),
        Param("status", T.STRING, "The state of the storage pool", choices=storagepools.POOL_STATES),
    ),
)
def list_pools(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = storagepools.list_pools(ctx, args, Page.from_args(args))
    factor = settings.get(ctx.session, "storage.overprovisioning.factor")  # once for the page
    return Listing(render_page(ctx.session, rows, lambda p: _pool_view(ctx, p, factor)), total)


@api(
    "updateStoragePool",
    "Updates a storage pool",
    response="storagepool",
    access=ADMIN,
    event="STORAGE.POOL.UPDATE",
    params=(
        Param("id", T.UUID, "The ID of the storage pool", required=True),
        Param("name", T.STRING, "New name of the pool", max_length=255),
        Param("tags", T.LIST, "Comma-separated list of storage tags"),
        Param("capacitybytes", T.LONG, "Capacity in bytes", min_value=0),
        Param("capacityiops", T.LONG, "IOPS", min_value=0),
        Param("enabled", T.BOOLEAN, "False to disable the pool for new disks, true to enable it"),
    ),
)
def update_pool(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return _pool_view(ctx, storagepools.update_pool(ctx, args))


@api(
    "deleteStoragePool",
    "Deletes a storage pool",
    kind=Kind.SUCCESS,
    access=ADMIN,
    event="STORAGE.POOL.DELETE",
    params=(
        Param("id", T.UUID, "Storage pool id", required=True),
        Param("forced", T.BOOLEAN, "Force removal even if it still has volumes"),
    ),
)
def delete_pool(ctx: CallContext, args: dict[str, Any]) -> None:
    storagepools.delete_pool(ctx, args["id"], bool(args.get("forced")))


PROVIDERS = {"primary": ("DefaultPrimary",), "image": ("NFS",)}
"""What createStoragePool and addImageStore accept (CloudStack's provider names): directories, local or
mounted on every host, are the only storage Strato drives."""


@api(
    "listStorageProviders",
    "Lists storage providers",
    kind=Kind.LIST,
    response="dataStoreProvider",
    access=ADMIN,
    params=(
        Param(
            "type",
            T.STRING,
            "The type of storage provider: primary or image",
            required=True,
            choices=("primary", "image"),
        ),
    ),
)
def list_providers(ctx: CallContext, args: dict[str, Any]) -> Listing:
    items = [{"name": name, "type": args["type"].upper()} for name in PROVIDERS[args["type"].lower()]]
    return Listing(items, len(items))


@api(
    "addImageStore",
    "Adds a backend image store (secondary storage)",
    response="imagestore",
    access=ADMIN,
    event="IMAGE.STORE.ADD",
    params=(
        Param("name", T.STRING, "The name for the image store", max_length=255),
        Param(
            "url",
            T.STRING,
            "The URL: file://localhost/<path> of a local or already mounted directory",
            required=True,
            max_length=1024,
        ),
        Param("zoneid", T.UUID, "The zone ID of the image store"),
        Param("provider", T.STRING, "The image store provider name: NFS", required=True, max_length=64),
    ),
)
def add_image_store(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.image_store(ctx.session, storagepools.add_image_store(ctx, args))


@api(
    "listImageStores",
    "Lists image stores",
    kind=Kind.LIST,
    response="imagestore",
    access=ADMIN,
    params=(
        Param("id", T.UUID, "The ID of the image store"),
        Param("name", T.STRING, "The name of the image store", max_length=255),
        Param("zoneid", T.UUID, "The zone ID of the image store"),
        Param("provider", T.STRING, "The image store provider", max_length=64),
        Param("protocol", T.STRING, "The image store protocol", max_length=32),
    ),
)
def list_image_stores(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = storagepools.list_image_stores(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda s: views.image_store(ctx.session, s)), total)


@api(
    "deleteImageStore",
    "Deletes an image store",
    kind=Kind.SUCCESS,
    access=ADMIN,
    event="IMAGE.STORE.DELETE",
    params=(Param("id", T.UUID, "The image store ID", required=True),),
)
def delete_image_store(ctx: CallContext, args: dict[str, Any]) -> None:
    storagepools.delete_image_store(ctx, args["id"])


@api(
    "enableStorageMaintenance",
    "Puts a storage pool into maintenance: its disks move to other pools first (live for running VMs)",
    kind=Kind.ASYNC,
    response="storagepool",
    access=ADMIN,
    event="MAINT.PREPARE.PS",
    params=(Param("id", T.UUID, "Primary storage ID", required=True), BANDWIDTH),
)
def enable_maintenance(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(pool_maintenance.enable_maintenance(ctx, args), args["id"])


@api(
    "cancelStorageMaintenance",
    "Cancels maintenance for primary storage",
    kind=Kind.ASYNC,
    response="storagepool",
    access=ADMIN,
    event="MAINT.CANCEL.PS",
    params=(Param("id", T.UUID, "The primary storage ID", required=True),),
)
def cancel_maintenance(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(pool_maintenance.cancel_maintenance(ctx, args), args["id"])
