"""Recurring volume snapshots: createSnapshotPolicy, listSnapshotPolicies, deleteSnapshotPolicies, and
the periodic task that takes a policy's snapshot when it is due (every snapshot.poll.interval seconds).

A volume has at most one policy per interval type (creating another updates it, as CloudStack does).
Each firing queues a createSnapshot job (snapshottype RECURRING) as the volume's owner; once it is
BackedUp, the policy's snapshots beyond maxsnaps are deleted, the oldest first (create_snapshot)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from strato.db.base import as_utc, utcnow
from strato.db.engine import Database
from strato.db.models import Snapshot, SnapshotPolicy, Volume
from strato.engine import queue
from strato.engine.periodic import periodic
from strato.errors import CloudError, InvalidParameter, NotFound
from strato.services.core import settings
from strato.services.core.access import get_owned, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.storage.create_snapshot import CreateSnapshot, CreateSnapshotParams, check_volume, new_snapshot
from strato.services.storage.snapshot_schedule import INTERVALS, next_run, parse, zone
from strato.services.storage.volumes import get_volume

log = logging.getLogger("strato.snapshots")


def create_policy(ctx: CallContext, args: dict[str, Any]) -> SnapshotPolicy:
    vol = get_volume(ctx, args["volumeid"], "volumeid")
    interval = str(args["intervaltype"]).upper()
    if interval not in INTERVALS:
        raise InvalidParameter(f"Parameter intervaltype must be one of {', '.join(INTERVALS)}")
    parse(interval, args["schedule"])
    timezone = args.get("timezone") or "UTC"
    zone(timezone)
    cap = int(settings.get(ctx.session, f"snapshot.max.{interval.lower()}"))
    maxsnaps = int(args["maxsnaps"])
    if not 1 <= maxsnaps <= cap:
        raise InvalidParameter(
            f"Parameter maxsnaps must be between 1 and {cap} (snapshot.max.{interval.lower()}) for {interval}"
        )
    policy = ctx.session.scalar(
        select(SnapshotPolicy).where(
            SnapshotPolicy.volume_id == vol.id,
            SnapshotPolicy.interval_type == interval,
            SnapshotPolicy.removed.is_(None),
        )
    )
    due = next_run(interval, args["schedule"], timezone, utcnow())
    if policy is None:
        policy = SnapshotPolicy(
            volume_id=vol.id,
            account_id=vol.account_id,
            interval_type=interval,
            schedule=args["schedule"],
            timezone=timezone,
            max_snaps=maxsnaps,
            next_run=due,
        )
        ctx.session.add(policy)
        ctx.session.flush()
    else:
        policy.schedule, policy.timezone, policy.max_snaps, policy.next_run = args["schedule"], timezone, maxsnaps, due
    return policy


def list_policies(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[SnapshotPolicy], int]:
    q = select(SnapshotPolicy).where(
        SnapshotPolicy.removed.is_(None), owner_scope(ctx, args).condition(SnapshotPolicy.account_id)
    )
    q = q.where(SnapshotPolicy.volume_id.in_(select(Volume.id).where(Volume.removed.is_(None))))
    if args.get("volumeid"):
        get_volume(ctx, args["volumeid"], "volumeid")
        q = q.where(SnapshotPolicy.volume_id == args["volumeid"])
    if args.get("id"):
        q = q.where(SnapshotPolicy.id == args["id"])
    return run_page(ctx.session, q, page, (), (SnapshotPolicy.created, SnapshotPolicy.id))


def delete_policies(ctx: CallContext, args: dict[str, Any]) -> None:
    ids = list(args.get("ids") or []) + ([args["id"]] if args.get("id") else [])
    if not ids:
        raise InvalidParameter("Give id or ids of the snapshot policies to delete")
    found: list[SnapshotPolicy] = []
    for policy_id in ids:
        try:
            found.append(get_owned(ctx, SnapshotPolicy, policy_id, "snapshot policy"))
        except NotFound:
            raise NotFound(f"Unable to find snapshot policy with id={policy_id}") from None
    now = utcnow()
    for policy in found:
        policy.removed = now


def drop_volume_policies(session: Any, volume_id: str) -> None:
    """A deleted volume takes no more snapshots (its snapshots stay)."""
    now = utcnow()
    for policy in session.scalars(
        select(SnapshotPolicy).where(SnapshotPolicy.volume_id == volume_id, SnapshotPolicy.removed.is_(None))
    ):
        policy.removed = now


def _poll_interval(db: Database) -> float:
    with db.session() as s:
        return float(settings.get(s, "snapshot.poll.interval"))


@periodic("snapshot-policies", every_s=_poll_interval)
def run_due_policies(db: Database) -> None:
    """Queues the snapshot of every policy that is due, then moves its next run on (also when the volume
    cannot be snapshotted now: that run is skipped, as CloudStack skips it, and the reason logged)."""
    now = utcnow()
    with db.session() as s:
        due = list(s.scalars(select(SnapshotPolicy).where(SnapshotPolicy.removed.is_(None),
                                                          SnapshotPolicy.next_run <= now)))  # fmt: skip
        for policy in due:
            policy.next_run = next_run(policy.interval_type, policy.schedule, policy.timezone,
                                       max(now, as_utc(policy.next_run)))  # fmt: skip
            vol = s.get(Volume, policy.volume_id)
            if vol is None or vol.removed is not None:
                policy.removed = now
                continue
            try:
                with s.begin_nested():
                    _submit(s, vol, policy)
            except CloudError as exc:
                log.warning("snapshot policy %s of volume %s skipped: %s", policy.id, vol.name, exc)


def _submit(s: Any, vol: Volume, policy: SnapshotPolicy) -> None:
    check_volume(s, vol)
    snap: Snapshot = new_snapshot(s, vol, None, policy.interval_type, policy.id)
    params = CreateSnapshotParams(snapshot_id=snap.id, volume_id=vol.id, vm_id=vol.vm_id)
    CreateSnapshot.check(s, params)
    queue.submit(s, kind=CreateSnapshot.kind, cmd=CreateSnapshot.cmd, params=params.model_dump(mode="json"),
                 resources=CreateSnapshot.resources(params), account_id=vol.account_id, user_id=None,
                 instance_type="Snapshot", instance_id=snap.id)  # fmt: skip
