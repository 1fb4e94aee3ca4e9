"""Listing the audit events the caller may see."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from strato.db.models import Event
from strato.engine.audit import record_event
from strato.services.core.access import owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page

__all__ = ["list_events", "record_event"]


def list_events(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[Event], int]:
    """listEvents: the events of the resources the caller may see, filtered and paged."""
    q = select(Event).where(Event.removed.is_(None))
    scope = owner_scope(ctx, args)
    if scope.account_ids is not None or scope.domain_path is not None:
        q = q.where(scope.condition(Event.account_id))
    for param, col in (("id", Event.id), ("type", Event.type), ("level", Event.level)):
        if args.get(param):
            q = q.where(col == args[param])
    if args.get("resourceid"):
        q = q.where(Event.resource_id == args["resourceid"])
    if args.get("startdate"):
        q = q.where(Event.created >= args["startdate"])
    if args.get("enddate"):
        q = q.where(Event.created <= args["enddate"])
    return run_page(ctx.session, q, page, (Event.type, Event.description), (Event.created.desc(),))
