"""Pagination, keyword search and ownership filters shared by every list service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from strato.db import rows as dbrows
from strato.errors import InvalidParameter

MAX_PAGE_SIZE = 10_000  # CloudStack's default.max.page.size is 500; we allow more, bounded.

E = TypeVar("E")


@dataclass(frozen=True)
class Page:
    """CloudStack's page, pagesize and keyword, parsed once for every list command."""

    page: int | None = None
    pagesize: int | None = None
    keyword: str | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> Page:
        page, size = args.get("page"), args.get("pagesize")
        if page is not None and size is None:
            raise InvalidParameter("Parameter page must be used together with pagesize")
        if size is not None and size != -1 and (size < 1 or size > MAX_PAGE_SIZE):
            raise InvalidParameter(f"Parameter pagesize must be -1 or between 1 and {MAX_PAGE_SIZE}")
        return cls(page=page, pagesize=size, keyword=args.get("keyword"))


def run_page(
    session: Session,
    query: Select[E],
    page: Page,
    keyword_columns: tuple[InstrumentedAttribute[Any], ...] = (),
    order_by: tuple[Any, ...] = (),
) -> tuple[list[E], int]:
    """Applies keyword and paging; returns the page's rows (read-only rows, strato.db.rows: a page is
    rendered, never changed) and the total count before paging. The count costs a query only when the
    page cannot tell it (a full page, or an empty one past the first)."""
    if page.keyword and keyword_columns:
        pattern = f"%{page.keyword.lower()}%"
        query = query.where(or_(*(func.lower(c).like(pattern) for c in keyword_columns)))
    paged = query.order_by(*order_by) if order_by else query
    limit = page.pagesize if page.pagesize is not None and page.pagesize != -1 else None
    offset = ((page.page or 1) - 1) * limit if limit is not None else 0
    if limit is not None:
        paged = paged.limit(limit).offset(offset)
    rows: list[E] = dbrows.load(session, dbrows.entity_of(query), paged)
    if limit is None:
        return rows, len(rows)
    if 0 < len(rows) < limit or (not rows and offset == 0):
        return rows, offset + len(rows)
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    return rows, total


def paginate_rows(rows: list[E], page: Page) -> tuple[list[E], int]:
    """Paging for lists computed in Python (small, filtered after the query)."""
    total = len(rows)
    if page.pagesize is not None and page.pagesize > 0:
        start = ((page.page or 1) - 1) * page.pagesize
        rows = rows[start : start + page.pagesize]
    return rows, total
