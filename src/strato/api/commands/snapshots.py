"""Volume snapshots and their recurring policies (CloudStack's commands and responses)."""

from __future__ import annotations

from typing import Any

from strato.api import views_snapshots as views
from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import TAGS_FILTER, Param, T
from strato.api.registry import Kind, api
from strato.services.core.context import CallContext
from strato.services.core.listing import Page
from strato.services.storage import create_snapshot, delete_snapshot, revert_snapshot, snapshot_policies, snapshots
from strato.services.storage.snapshot_schedule import INTERVALS


@api(
    "createSnapshot",
    "Creates a snapshot of a volume (live when its VM runs) on the zone's image store",
    kind=Kind.ASYNC,
    event="SNAPSHOT.CREATE",
    params=(
        Param("volumeid", T.UUID, "The ID of the disk volume", required=True),
        Param("name", T.STRING, "The name of the snapshot", max_length=255),
        Param("quiescevm", T.BOOLEAN, "Quiesce the VM: refused when true (there is no guest agent)"),
        Param("asyncbackup", T.BOOLEAN, "Accepted; the copy to the image store is always part of the job"),
        Param("policyid", T.UUID, "A snapshot policy of the volume: the snapshot counts as one of its own"),
        Param("tags", T.MAP, "Tags for the snapshot (tags[0].key=k&tags[0].value=v)", max_length=255),
    ),
)
def create(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    snap, job_id = create_snapshot.create(ctx, args)
    return AsyncStarted(job_id, snap.id)


@api(
    "listSnapshots",
    "Lists volume snapshots",
    kind=Kind.LIST,
    response="snapshot",
    owned=True,
    params=(
        Param("id", T.UUID, "The ID of the snapshot"),
        Param("ids", T.LIST, "The IDs of the snapshots", item_type=T.UUID),
        Param("volumeid", T.UUID, "The ID of the disk volume"),
        Param("name", T.STRING, "Lists snapshots by name", max_length=255),
        Param("snapshottype", T.STRING, "MANUAL or RECURRING", choices=("MANUAL", "RECURRING", "manual", "recurring")),
        Param("intervaltype", T.STRING, "MANUAL, HOURLY, DAILY, WEEKLY or MONTHLY", max_length=16),
        Param("state", T.STRING, "State of the snapshot", max_length=32),
        Param("zoneid", T.UUID, "The ID of the zone"),
        TAGS_FILTER,
    ),
)
def list_snapshots(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = snapshots.list_snapshots(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda r: views.snapshot(ctx.session, r)), total)


@api(
    "deleteSnapshot",
    "Deletes a snapshot: its file leaves the image store",
    kind=Kind.ASYNC,
    event="SNAPSHOT.DELETE",
    params=(Param("id", T.UUID, "The ID of the snapshot", required=True),),
)
def delete(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(delete_snapshot.delete(ctx, args), args["id"])


@api(
    "revertSnapshot",
    "Reverts a volume to a snapshot (its VM must be Stopped)",
    kind=Kind.ASYNC,
    event="SNAPSHOT.REVERT",
    params=(Param("id", T.UUID, "The ID of the snapshot", required=True),),
)
def revert(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    snap_id, job_id = revert_snapshot.revert(ctx, args)
    return AsyncStarted(job_id, snap_id)


@api(
    "createSnapshotPolicy",
    "Creates (or updates, for the same interval type) a recurring snapshot policy of a volume",
    kind=Kind.OBJECT,
    response="snapshotpolicy",
    event="SNAPSHOTPOLICY.CREATE",
    params=(
        Param("volumeid", T.UUID, "The ID of the disk volume", required=True),
        Param(
            "intervaltype",
            T.STRING,
            "HOURLY, DAILY, WEEKLY or MONTHLY",
            required=True,
            choices=INTERVALS + tuple(i.lower() for i in INTERVALS),
        ),
        Param(
            "schedule",
            T.STRING,
            "MM (hourly), MM:HH (daily), MM:HH:DD (weekly: 1-7, monthly: 1-28)",
            required=True,
            max_length=32,
        ),
        Param("maxsnaps", T.INTEGER, "Maximum snapshots kept by the policy", required=True, min_value=1),
        Param("timezone", T.STRING, "Time zone of the schedule (default UTC)", max_length=64),
    ),
)
def create_policy(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.policy(ctx.session, snapshot_policies.create_policy(ctx, args))


@api(
    "listSnapshotPolicies",
    "Lists recurring snapshot policies",
    kind=Kind.LIST,
    response="snapshotpolicy",
    owned=True,
    params=(
        Param("id", T.UUID, "The ID of the snapshot policy"),
        Param("volumeid", T.UUID, "The ID of the disk volume"),
    ),
)
def list_policies(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = snapshot_policies.list_policies(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda r: views.policy(ctx.session, r)), total)


@api(
    "deleteSnapshotPolicies",
    "Deletes recurring snapshot policies",
    kind=Kind.SUCCESS,
    event="SNAPSHOTPOLICY.DELETE",
    params=(
        Param("id", T.UUID, "The ID of the snapshot policy"),
        Param("ids", T.LIST, "The IDs of the snapshot policies", item_type=T.UUID),
    ),
)
def delete_policies(ctx: CallContext, args: dict[str, Any]) -> None:
    snapshot_policies.delete_policies(ctx, args)
