"""Resource tags (createTags, deleteTags, listTags) on the resources that carry an owner or are
infrastructure an admin tags."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, or_, select

from strato.db.base import utcnow
from strato.db.models import (
    Account,
    ResourceTag,
    Snapshot,
    StoragePool,
    Template,
    VirtualMachine,
    VMSnapshot,
    Volume,
    Zone,
)
from strato.errors import InvalidParameter, NotFound, PermissionDenied
from strato.services.core.access import check_account_access, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live

# CloudStack resource type names → (model, owner column or None for admin-only infrastructure).
TAGGABLE: dict[str, tuple[Any, str | None]] = {
    "Zone": (Zone, None),
    "StoragePool": (StoragePool, None),
    "Account": (Account, "id"),
    "UserVm": (VirtualMachine, "account_id"),
    "Volume": (Volume, "account_id"),
    "Template": (Template, "account_id"),
    "ISO": (Template, "account_id"),
    "Snapshot": (Snapshot, "account_id"),
    "VMSnapshot": (VMSnapshot, "account_id"),
}


def _resolve_type(resource_type: str) -> tuple[str, Any, str | None]:
    for name, (model, owner) in TAGGABLE.items():
        if name.lower() == resource_type.lower():
            return name, model, owner
    raise InvalidParameter(
        f"Parameter resourcetype: {resource_type} is not a taggable resource type "
        f"(one of {', '.join(sorted(TAGGABLE))})"
    )


def _owner(ctx: CallContext, model: Any, owner_col: str | None, resource_id: str) -> str | None:
    row = get_live(ctx.session, model, resource_id, "resource", "resourceids")
    if owner_col is None:
        if not ctx.is_root_admin:
            raise InvalidParameter("Only the root admin may tag infrastructure resources")
        return None
    account_id: str = getattr(row, owner_col)
    acct = ctx.session.get(Account, account_id)
    assert acct is not None
    try:
        check_account_access(ctx, acct)
    except PermissionDenied:
        if getattr(row, "is_public", False):
            raise  # a public template or ISO is no secret: its owner alone may tag it
        raise NotFound(f"Unable to find resource with resourceids={resource_id}") from None
    return account_id


def check_tags(tags: list[dict[str, str]]) -> None:
    if not tags:
        raise InvalidParameter("Parameter tags must have at least one entry: tags[0].key=...&tags[0].value=...")
    for entry in tags:
        if not entry.get("key") or "value" not in entry:
            raise InvalidParameter("Each tags[i] needs a key and a value")


def tagged(id_column: Any, tags: list[dict[str, str]] | None) -> list[ColumnElement[bool]]:
    """The conditions of a list command's `tags` filter (tags[i].key, tags[i].value): rows carrying
    every tag listed, as CloudStack filters; a key given without a value matches any value."""
    conditions: list[ColumnElement[bool]] = []
    for entry in tags or []:
        if not entry.get("key"):
            raise InvalidParameter("Parameter tags: each tags[i] needs a key")
        match = select(ResourceTag.resource_id).where(ResourceTag.key == entry["key"], ResourceTag.removed.is_(None))
        if entry.get("value") is not None:
            match = match.where(ResourceTag.value == entry["value"])
        conditions.append(id_column.in_(match))
    return conditions


def create_tags(ctx: CallContext, resource_type: str, ids: list[str], tags: list[dict[str, str]]) -> None:
    """createTags: key/value tags on resources the caller may act on."""
    name, model, owner_col = _resolve_type(resource_type)
    check_tags(tags)
    for rid in ids:
        owner = _owner(ctx, model, owner_col, rid)
        for entry in tags:
            exists = ctx.session.scalar(
                select(ResourceTag).where(
                    ResourceTag.resource_id == rid,
                    ResourceTag.key == entry["key"],
                    ResourceTag.removed.is_(None),
                )
            )
            if exists is not None:
                raise InvalidParameter(f"A tag with key {entry['key']} already exists on resource {rid}")
            acct = ctx.session.get(Account, owner) if owner else None
            ctx.session.add(
                ResourceTag(
                    key=entry["key"],
                    value=entry["value"],
                    resource_type=name,
                    resource_id=rid,
                    account_id=owner,
                    domain_id=acct.domain_id if acct else None,
                )
            )


def delete_tags(ctx: CallContext, resource_type: str, ids: list[str], tags: list[dict[str, str]]) -> int:
    """deleteTags: removes the matching tags (all of a resource's when none are named)."""
    _, model, owner_col = _resolve_type(resource_type)
    removed = 0
    for rid in ids:
        _owner(ctx, model, owner_col, rid)
        q = select(ResourceTag).where(ResourceTag.resource_id == rid, ResourceTag.removed.is_(None))
        for row in ctx.session.scalars(q):
            wanted = not tags or any(t.get("key") == row.key and t.get("value") in (None, row.value) for t in tags)
            if wanted:
                row.removed = utcnow()
                removed += 1
    return removed


def list_tags(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[ResourceTag], int]:
    """listTags: the tags of the resources the caller may see, and only of resources still there (the
    rows of a deleted resource stay in the table; its tags are not listed, as CloudStack drops them)."""
    q = select(ResourceTag).where(ResourceTag.removed.is_(None), _of_live_resources())
    if not ctx.is_root_admin or (not args.get("listall") and (args.get("domainid") or args.get("account"))):
        q = q.where(owner_scope(ctx, args).condition(ResourceTag.account_id))
    for param, col in (
        ("key", ResourceTag.key),
        ("value", ResourceTag.value),
        ("resourceid", ResourceTag.resource_id),
    ):
        if args.get(param):
            q = q.where(col == args[param])
    if args.get("resourcetype"):
        q = q.where(ResourceTag.resource_type == _resolve_type(args["resourcetype"])[0])
    return run_page(ctx.session, q, page, (ResourceTag.key, ResourceTag.value), (ResourceTag.created,))


def _of_live_resources() -> ColumnElement[bool]:
    live = [
        (ResourceTag.resource_type == name)
        & ResourceTag.resource_id.in_(select(model.id).where(model.removed.is_(None)))
        for name, (model, _owner) in TAGGABLE.items()
    ]
    return or_(*live)
