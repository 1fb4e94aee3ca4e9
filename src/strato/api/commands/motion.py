"""Storage motion: moving volumes between pools, and where they could go. Root admins only, as in
CloudStack (a domain admin or a user is told the command is not available to them, 432)."""

from __future__ import annotations

from typing import Any

from strato.api import views
from strato.api.envelope import AsyncStarted, Listing
from strato.api.params import Param, T
from strato.api.registry import ADMIN, Kind, api
from strato.services.core import settings
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, paginate_rows
from strato.services.motion import find_pools, migrate_volume

BANDWIDTH = Param(
    "bandwidth",
    T.INTEGER,
    "Strato: the most the move may copy per second, in MiB/s (default: unlimited)",
    min_value=1,
)
"""Every storage-motion command's limit (migrateVolume, migrateVirtualMachine(WithVolume), storage and
host maintenance, which pass it to each move they make)."""


@api(
    "migrateVolume",
    "Migrates a volume to another storage pool: live while its VM runs, offline when it is stopped or the "
    "volume detached",
    kind=Kind.ASYNC,
    access=ADMIN,
    event="VOLUME.MIGRATE",
    params=(
        Param("volumeid", T.UUID, "The ID of the volume", required=True),
        Param("storageid", T.UUID, "Destination storage pool ID to migrate the volume to", required=True),
        Param(
            "livemigrate",
            T.BOOLEAN,
            "If the volume's VM is running: true (or absent) moves it live; false is refused. Ignored for "
            "a stopped VM's or a detached volume (moved offline)",
        ),
        BANDWIDTH,
    ),
)
def migrate(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(migrate_volume.migrate(ctx, args), args["volumeid"])


@api(
    "findStoragePoolsForMigration",
    "Lists storage pools available for migration of a volume: every pool but its own, with "
    "suitableformigration and, Strato's addition, reasonunsuitable (why a pool cannot take it: storage "
    "tags, capacity, a pool the VM's host cannot reach, another zone, a pool not Up)",
    kind=Kind.LIST,
    response="storagepool",
    access=ADMIN,
    params=(Param("id", T.UUID, "The ID of the volume", required=True),),
)
def find_storage_pools(ctx: CallContext, args: dict[str, Any]) -> Listing:
    over = settings.get(ctx.session, "storage.overprovisioning.factor")
    rows, total = paginate_rows(find_pools.find_pools(ctx, args), Page.from_args(args))
    items = []
    for pool, reason in rows:
        view = views.storage_pool(ctx.session, pool, over)
        view["suitableformigration"] = reason is None
        if reason is not None:
            view["reasonunsuitable"] = reason
        items.append(view)
    return Listing(items, total)
