"""Which host can act on which storage: the agent that runs an operation must reach every directory
involved (pools by scope; image stores are mounted on every host of their zone)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Host, ImageStore, StoragePool
from strato.engine.allocator import reaches as host_reaches
from strato.errors import ResourceUnavailable
from strato.protocol.messages import PoolRef


def up_hosts(session: Session, zone_id: str | None = None) -> list[Host]:
    """The hosts that can take work now, oldest first, so that the choice is stable."""
    q = select(Host).where(Host.removed.is_(None), Host.status == "Up").order_by(Host.created)
    if zone_id:
        q = q.where(Host.zone_id == zone_id)
    return list(session.scalars(q))


def host_for(
    session: Session,
    pools: Iterable[StoragePool],
    stores: Iterable[ImageStore] = (),
    prefer: str | None = None,
) -> Host:
    """An Up host reaching all the pools (and whose zone has the stores); `prefer` first if it does."""
    pools, stores = list(pools), list(stores)
    zones = {p.zone_id for p in pools} | {s.zone_id for s in stores if s.zone_id}
    candidates = up_hosts(session)
    candidates.sort(key=lambda h: h.id != prefer)
    for host in candidates:
        if all(host_reaches(host, p) for p in pools) and (not zones or zones <= {host.zone_id} or not pools):
            return host
    names = ", ".join([p.name for p in pools] + [s.name for s in stores])
    raise ResourceUnavailable(f"No host that is Up reaches all of: {names}")


def host_for_cleanup(session: Session, pools: Iterable[StoragePool]) -> Host:
    """A host to remove files with: an Up one reaching the pools, else any live host reaching them
    (a host whose agent has just restarted is Up again only at its next state report, and the undo of
    a failed step should not leave a file behind for that); the call fails if that agent is gone."""
    pools = list(pools)
    try:
        return host_for(session, pools)
    except ResourceUnavailable:
        rest = session.scalars(select(Host).where(Host.removed.is_(None)).order_by(Host.created))
        found = next((h for h in rest if all(host_reaches(h, p) for p in pools)), None)
        if found is None:
            raise
        return found


def pool_ref(pool: StoragePool) -> PoolRef:
    """A pool as the agent addresses it (id and path)."""
    return PoolRef(id=pool.id, path=pool.path)


def store_ref(store: ImageStore) -> PoolRef:
    """An image store as the agent addresses it, like a pool."""
    return PoolRef(id=store.id, path=store.path)
