"""findStoragePoolsForMigration: every pool but the volume's own, each with whether the volume could move
there now and, when not, why (the same rules migrateVolume checks, so the two never disagree)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from strato.db.models import StoragePool
from strato.services.core.context import CallContext
from strato.services.motion.rules import unsuitable, vm_of, wants_live
from strato.services.storage.volumes import get_volume


def find_pools(ctx: CallContext, args: dict[str, Any]) -> list[tuple[StoragePool, str | None]]:
    """(pool, None when suitable else the reason) for every live pool but the volume's own: those of its
    zone first (by name), then the others (unsuitable: another zone)."""
    vol = get_volume(ctx, args["id"])
    vm = vm_of(ctx.session, vol)
    live = wants_live(vm)
    pools = ctx.session.scalars(
        select(StoragePool).where(StoragePool.removed.is_(None), StoragePool.id != vol.pool_id)
    ).all()
    ordered = sorted(pools, key=lambda p: (p.zone_id != vol.zone_id, p.name, p.id))
    out: list[tuple[StoragePool, str | None]] = []
    for pool in ordered:
        reason = unsuitable(ctx.session, vol, vm, pool, live)
        out.append((pool, reason.text if reason is not None else None))
    return out
