"""Loads what a page of rows refers to in a fixed number of queries, so a list view costs the same SQL
at 10 rows and at 500.

A list command renders its page inside `page_load(session, rows)`. On entry, the rows' foreign keys are
followed (a VM's zone, template, host, offering, account), then, level by level, the few references the
views follow further (an account's domain, a layer's parent): one `IN (...)` query per referenced model
and level, whatever the page size. The objects stay in the session's identity map, so the renderers'
`session.get` calls cost nothing. One-to-many data (a resource's tags, an account's users, a domain's children) is asked
through `related()`: the first row that asks loads it for every row of the page in one query."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Mapper, Session

from strato.db import rows as dbrows
from strato.db.base import Base
from strato.db.models import Account, Domain, Layer, Network, NetworkOfferingRow, SecurityGroup, VMSnapshot, Volume
from strato.db.rows import model_of

_KEY = "strato.pageload"
CHUNK = 5000  # ids per IN (...): far below SQLite's and PostgreSQL's bind limits
MAX_DEPTH = 8  # levels of references followed (a layer chain is the deepest)

# References without a database foreign key (a constraint cycle avoided), followed all the same.
EXTRA_REFS: dict[type, tuple[tuple[str, type], ...]] = {
    Volume: (("top_layer_id", Layer),),
    Network: (("network_offering_id", NetworkOfferingRow),),
}
# Beyond the rows' own references, what the views follow: owner fields name the account's domain, a
# volume's chain walks its layers' parents, a domain shows its parent, a VM snapshot's shown parent
# skips hidden ones, a security group rule's peer group names its account.
FOLLOW: dict[type, tuple[tuple[str, type], ...]] = {
    Account: (("domain_id", Domain),),
    Layer: (("parent_id", Layer),),
    VMSnapshot: (("parent_id", VMSnapshot),),
    SecurityGroup: (("account_id", Account),),
}


@dataclass
class PageLoad:
    """What one page has loaded: the page's ids, the loaded objects (held: the identity map is weak)."""

    ids: set[Any] = field(default_factory=set)
    keep: list[Any] = field(default_factory=list)
    related: dict[str, dict[Any, list[Any]]] = field(default_factory=dict)
    rows: dict[tuple[type, Any], Any] = field(default_factory=dict)
    """(model, id) -> the read-only row (strato.db.rows) of a reference, loaded for the page."""


@cache
def _model_of_table() -> dict[Any, type]:
    return {mapper.local_table: mapper.class_ for mapper in Base.registry.mappers}


def _primary_key(model: type) -> tuple[Any, ...]:
    mapper: Mapper[Any] = inspect(model)
    return tuple(mapper.primary_key)


@cache
def _pk_attr(model: type) -> str:
    mapper: Mapper[Any] = inspect(model)
    return mapper.get_property_by_column(mapper.primary_key[0]).key


@cache
def refs_of(cls: type) -> tuple[tuple[str, type], ...]:
    """(attribute, target model) of each reference of a model to another row's primary key."""
    mapper: Mapper[Any] = inspect(cls)
    tables = _model_of_table()
    out: list[tuple[str, type]] = []
    for attr in mapper.column_attrs:
        for column in attr.columns:
            for fk in getattr(column, "foreign_keys", ()):
                target = tables.get(fk.column.table)
                if target is None:
                    continue
                pk = _primary_key(target)
                if len(pk) == 1 and pk[0] is fk.column:
                    out.append((attr.key, target))
    return tuple(out) + EXTRA_REFS.get(cls, ())


def _current(session: Session) -> PageLoad | None:
    value = session.info.get(_KEY)
    return value if isinstance(value, PageLoad) else None


def loaded(session: Session, model: type, row_id: Any) -> Any:
    """The page's read-only row of a reference, None when the page has not loaded it."""
    page = session.info.get(_KEY)
    return page.rows.get((model, row_id)) if page is not None else None


def prefetch(session: Session, rows: Iterable[Any], depth: int = MAX_DEPTH) -> None:
    """Loads what the rows refer to, then what FOLLOW says of that, up to depth levels, a query per model
    and level, as read-only rows (strato.db.rows) inside a page; what is already loaded costs nothing."""
    load = _current(session)
    have = load.rows if load is not None else {}
    imap = session.identity_map
    level = [r for r in rows if model_of(r) is not None]
    for n in range(depth):
        wanted: dict[type, set[Any]] = {}
        for obj in level:
            model = model_of(obj)
            assert model is not None
            for attr, target in refs_of(model) if n == 0 else FOLLOW.get(model, ()):
                value = getattr(obj, attr)
                if value is not None and (target, value) not in have and (target, (value,), None) not in imap:
                    wanted.setdefault(target, set()).add(value)
        if not wanted:
            return
        level = []
        for target, ids in wanted.items():
            pk = _primary_key(target)[0]
            ordered = sorted(ids, key=str)
            for start in range(0, len(ordered), CHUNK):
                chunk = ordered[start : start + CHUNK]
                if load is None:
                    level.extend(session.scalars(select(target).where(pk.in_(chunk))))
                    continue
                found: list[Any] = dbrows.load_where(session, target, dbrows.among(session, pk, chunk))
                key = _pk_attr(target)
                have.update(((target, getattr(r, key)), r) for r in found)
                level.extend(found)


@contextmanager
def page_load(session: Session, rows: Sequence[Any]) -> Iterator[PageLoad]:
    """The page's batch loader, for the renderers of its rows; nested pages (a job's result) share it."""
    outer = _current(session)
    load = outer or PageLoad()
    load.ids.update(getattr(r, "id", None) for r in rows)
    load.ids.discard(None)
    session.info[_KEY] = load
    try:
        prefetch(session, rows)
        yield load
    finally:
        if outer is None:
            session.info.pop(_KEY, None)


def add_to_page(session: Session, rows: Sequence[Any]) -> None:
    """More rows rendered with the page (a job's result objects): their references are loaded too."""
    load = _current(session)
    if load is None:
        return
    load.ids.update(getattr(r, "id", None) for r in rows)
    load.ids.discard(None)
    load.keep.extend(rows)
    for r in rows:
        if isinstance(r, dbrows.Row):
            load.rows[(r.__model__, getattr(r, _pk_attr(r.__model__)))] = r
    prefetch(session, rows)


def render_page(session: Session, rows: Sequence[Any], render: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """Renders a page's rows with their references and related data loaded for the whole page."""
    with page_load(session, rows):
        return [render(r) for r in rows]


Loader = Callable[[Collection[Any]], Iterable[tuple[Any, Any]]]
"""Given owner ids, yields (owner id, item) pairs, in the order the view lists them."""


def related(session: Session, name: str, owner_id: Any, load: Loader, refs: bool = True) -> list[Any]:
    """The items of one owner (a resource's tags, an account's users). Within a page, the first ask
    loads them for every row of the page in one query, and (refs) what the items refer to; outside a
    page, for this owner only."""
    page = _current(session)
    if page is None:
        return [item for _, item in load([owner_id])]
    cached = page.related.setdefault(name, {})
    if owner_id not in cached:
        owners = {owner_id} | (page.ids - cached.keys())
        for owner in owners:
            cached[owner] = []
        ordered = sorted(owners, key=str)
        items = [pair for start in range(0, len(ordered), CHUNK) for pair in load(ordered[start : start + CHUNK])]
        for owner, item in items:
            cached.setdefault(owner, []).append(item)
        objects = [item for _, item in items if model_of(item) is not None]
        page.keep.extend(objects)
        if refs:
            prefetch(session, objects)
    return cached[owner_id]
