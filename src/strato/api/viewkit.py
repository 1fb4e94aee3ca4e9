"""Pieces every CloudStack response object uses (dates, names next to ids, owner fields, tags, null
fields left out), shared by views and views_compute. List commands render through `render_page`, which
loads what the page's rows refer to in a fixed number of queries (see pageload)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.api.pageload import add_to_page as add_to_page
from strato.api.pageload import loaded, related
from strato.api.pageload import page_load as page_load
from strato.api.pageload import render_page as render_page
from strato.db import rows as dbrows
from strato.db.base import as_utc
from strato.db.models import Account, Domain, ResourceTag

T = TypeVar("T")


def cs_date(ts: datetime | None) -> str | None:
    """CloudStack's yyyy-MM-dd'T'HH:mm:ssZ, e.g. 2026-11-22T10:00:00+0000."""
    if ts is None:
        return None
    return as_utc(ts).strftime("%Y-%m-%dT%H:%M:%S+0000")


def fetch(session: Session, model: type[T], row_id: Any) -> T | None:
    """session.get, looking first among the page's preloaded references (read-only rows, see
    pageload) and in the session's identity map: a tenth of session.get's cost, which counts at
    thousands of lookups per page."""
    row = loaded(session, model, row_id)
    if row is not None:
        return cast(T, row)
    found = session.identity_map.get((model, (row_id,), None))
    if found is not None and isinstance(found, model):
        return found
    return session.get(model, row_id)


def name_of(session: Session, model: Any, row_id: str | None) -> str | None:
    """The name CloudStack shows next to an id (zonename, hostname...), None for a missing row."""
    if not row_id:
        return None
    row = fetch(session, model, row_id)
    return row.name if row is not None else None


def domain_fields(session: Session, domain_id: str | None) -> dict[str, Any]:
    """domainid, domain and domainpath, as every owned object carries them."""
    dom = fetch(session, Domain, domain_id) if domain_id else None
    if dom is None:
        return {}
    return {"domainid": dom.id, "domain": dom.name, "domainpath": "/" + dom.path}


def owner_fields(session: Session, account_id: str | None) -> dict[str, Any]:
    """account, accountid and the domain fields of an owned object."""
    acct = fetch(session, Account, account_id) if account_id else None
    if acct is None:
        return {}
    return {"account": acct.name, "accountid": acct.id, **domain_fields(session, acct.domain_id)}


def clean(d: dict[str, Any]) -> dict[str, Any]:
    """CloudStack omits null fields."""
    return {k: v for k, v in d.items() if v is not None}


def _load_tags(session: Session) -> Callable[[Collection[Any]], Iterable[tuple[Any, Any]]]:
    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        rows = dbrows.load(
            session,
            ResourceTag,
            select(ResourceTag)
            .where(dbrows.among(session, ResourceTag.resource_id, ids), ResourceTag.removed.is_(None))
            .order_by(ResourceTag.created, ResourceTag.id),
        )
        return [(r.resource_id, r) for r in rows]

    return load


def tags(session: Session, resource_id: str) -> list[dict[str, Any]]:
    """The live tags of a resource, as its `tags` field lists them (for the whole page at once)."""
    return [tag(session, r) for r in related(session, "tags", resource_id, _load_tags(session))]


def tag(session: Session, t: ResourceTag) -> dict[str, Any]:
    """One resource tag as listTags and the `tags` fields show it."""
    return clean(
        {
            "key": t.key,
            "value": t.value,
            "resourcetype": t.resource_type,
            "resourceid": t.resource_id,
            **owner_fields(session, t.account_id),
        }
    )


# object name → renderer of that object by id, for async job results.
ResultRenderer = Callable[[Session, str, bool], dict[str, Any] | None]
"""(session, object id, caller is root admin) -> the object as the caller may see it."""
RESULT_RENDERERS: dict[str, ResultRenderer] = {}


RESULT_MODELS: dict[str, type] = {}
"""object name → its model, so that a page of jobs loads its result objects in one query per type."""


def register_result(object_name: str, fn: ResultRenderer, model: type | None = None) -> None:
    """Lets queryAsyncJobResult render the object a job returns, whichever views module knows it."""
    RESULT_RENDERERS[object_name] = fn
    if model is not None:
        RESULT_MODELS[object_name] = model
