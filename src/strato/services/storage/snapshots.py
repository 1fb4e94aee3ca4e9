"""Volume snapshots: looking them up, listing them, where their files go, and removing those files.

A snapshot is one standalone qcow2 on an image store of the volume's zone (CloudStack keeps volume
snapshots on secondary storage), so it survives its volume, its VM and the pool the volume was on. Each
long operation on snapshots is its own module: create_snapshot, delete_snapshot, revert_snapshot,
volume_from_snapshot, snapshot_policies."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.engine import Database
from strato.db.models import Account, ImageStore, Snapshot, Volume
from strato.errors import InvalidParameter, InvalidState, NotFound, ResourceLimitExceeded, ResourceUnavailable
from strato.protocol.messages import LayerRef, RemoveLayer
from strato.services.core import limits, usage
from strato.services.core.access import get_owned, owner_scope
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.reach import store_ref, up_hosts
from strato.services.core.tags import tagged

SNAPSHOT_RESULT = "snapshot"
"""The job result type of createSnapshot and revertSnapshot (queryAsyncJobResult answers the snapshot)."""

INTERVAL_TYPES = ("HOURLY", "DAILY", "WEEKLY", "MONTHLY")


def snapshot_path(snap: Snapshot) -> str:
    """Where a snapshot's file lives on its store (CloudStack's snapshots/<account>/<volume>/ layout)."""
    return f"snapshots/{snap.account_id}/{snap.volume_id}/{snap.id}.qcow2"


def zone_store(session: Session, zone_id: str) -> ImageStore:
    """The image store a new snapshot goes to: the oldest writable store of the zone (or of every zone)."""
    q = select(ImageStore).where(ImageStore.removed.is_(None), ImageStore.readonly.is_(False))
    q = q.where((ImageStore.zone_id == zone_id) | ImageStore.zone_id.is_(None))
    store = session.scalar(q.order_by(ImageStore.created))
    if store is None:
        raise InvalidParameter("There is no image store in the volume's zone to keep snapshots on; add one")
    return store


def live_snapshot(session: Session, snapshot_id: str) -> Snapshot:
    snap = session.get(Snapshot, snapshot_id)
    if snap is None or snap.removed is not None:
        raise NotFound(f"Unable to find snapshot with id {snapshot_id}")
    return snap


def get_snapshot(ctx: CallContext, snapshot_id: str, param: str = "id") -> Snapshot:
    """A snapshot the caller may act on (another account's answers as unknown, as for every resource)."""
    found: Snapshot = get_owned(ctx, Snapshot, snapshot_id, "snapshot", param)
    return found


def backed_up(session: Session, snapshot_id: str) -> Snapshot:
    """A snapshot whose file is complete on its store: what revert, volumes and templates are made from."""
    snap = live_snapshot(session, snapshot_id)
    if snap.state != "BackedUp" or not snap.store_id or not snap.path:
        raise InvalidState(f"Snapshot {snap.name} is {snap.state}; it must be BackedUp")
    return snap


def snapshot_file(session: Session, snap: Snapshot) -> tuple[LayerRef, ImageStore]:
    """The snapshot's file as an agent addresses it, and its store."""
    store = session.get(ImageStore, snap.store_id) if snap.store_id else None
    if store is None or not snap.path:
        raise InvalidState(f"Snapshot {snap.name} has no file on an image store")
    return LayerRef(pool=store_ref(store), name=snap.path), store


def remove_file(db: Database, snapshot_id: str) -> None:
    """Removes the snapshot's file from its store (a file already gone is no error), through an Up host
    of the store's zone (image stores are mounted on every host of their zone)."""
    with db.session() as s:
        snap = s.get(Snapshot, snapshot_id)
        if snap is None or not snap.store_id or not snap.path:
            return
        where, store = snapshot_file(s, snap)
        hosts = up_hosts(s, store.zone_id)
        if not hosts:
            raise ResourceUnavailable(f"No host that is Up can reach image store {store.name}")
        client, host_name = host_client(hosts[0]), hosts[0].name
    with agent_errors(host_name):
        client.call(RemoveLayer(layer=where, missing_ok=True))


def mark_deleted(session: Session, snap: Snapshot) -> None:
    """The snapshot's file is gone: the row ends (CloudStack's Destroyed), counting and billed no more."""
    usage.record(session, usage.SNAPSHOT.end_event, account_id=snap.account_id, domain_id=snap.domain_id,
                 resource_id=snap.id, name=snap.name, zone_id=snap.zone_id)  # fmt: skip
    snap.state, snap.removed = "Destroyed", snap.removed or utcnow()


def check_limit(session: Session, snap: Snapshot) -> None:
    """The account's snapshot limit (type 3), with this snapshot's own row already counted."""
    owner = session.get(Account, snap.account_id)
    assert owner is not None
    cap = limits.limit(session, owner, limits.SNAPSHOT)
    if cap < 0:
        return
    others = limits.usage(session, owner.id, limits.SNAPSHOT) - (1 if snap.state != "Error" else 0)
    if others + 1 > cap:
        raise ResourceLimitExceeded(
            f"Maximum number of resources of type snapshot for account {owner.name} has exceeded: "
            f"limit {cap}, in use {others}, requested 1"
        )


def list_snapshots(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[Snapshot], int]:
    """listSnapshots: the caller's snapshots (listall / account / domain as every list), filtered, paged."""
    q = select(Snapshot).where(Snapshot.removed.is_(None), owner_scope(ctx, args).condition(Snapshot.account_id))
    for param, col in (
        ("id", Snapshot.id),
        ("volumeid", Snapshot.volume_id),
        ("name", Snapshot.name),
        ("zoneid", Snapshot.zone_id),
        ("state", Snapshot.state),
    ):
        if args.get(param):
            q = q.where(col == args[param])
    if args.get("ids"):
        q = q.where(Snapshot.id.in_(args["ids"]))
    if args.get("snapshottype"):
        q = q.where(Snapshot.snapshot_type == str(args["snapshottype"]).upper())
    if args.get("intervaltype"):
        q = q.where(Snapshot.interval_type == str(args["intervaltype"]).upper())
    q = q.where(*tagged(Snapshot.id, args.get("tags")))
    return run_page(ctx.session, q, page, (Snapshot.name,), (Snapshot.created.desc(), Snapshot.id))


def volume_of(session: Session, snap: Snapshot) -> Volume | None:
    """The snapshot's volume row (kept after the volume is deleted, to show its name and type)."""
    return session.get(Volume, snap.volume_id)
