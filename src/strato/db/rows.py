"""Read-only rows of a model as named tuples, for list pages of hundreds of rows.

Loading an ORM object costs tens of microseconds (identity map, state tracking, events); a page of 500
VMs with their zones, templates, hosts, offerings, accounts and domains loads thousands. A row here is a
named tuple with the model's attribute names, built from a Core select in about a microsecond. It is
duck-typed as the model for code that only reads columns (views): no relationships, no changes, no
session. Anything that writes loads the ORM object."""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Collection, Iterable, Sequence
from functools import cache
from typing import Any, TypeVar, cast

from sqlalchemy import ARRAY, ColumnElement, Select, String, any_, bindparam, func, inspect, select
from sqlalchemy.orm import Mapper, Session

E = TypeVar("E")


class Row(tuple):  # type: ignore[type-arg]
    """Base of every model's row class; `__model__` names the model it reads."""

    __slots__ = ()
    __model__: type = object

    @classmethod
    def _make(cls, values: Iterable[Any]) -> Row:  # the named tuple's, declared for the type checker
        raise NotImplementedError


@cache
def row_class(model: type) -> type[Row]:
    """The named tuple class of a model's column attributes."""
    mapper: Mapper[Any] = inspect(model)
    keys = [attr.key for attr in mapper.column_attrs]
    base = namedtuple(f"{model.__name__}Row", keys)  # type: ignore[misc]
    return cast(type[Row], type(f"{model.__name__}Row", (base, Row), {"__slots__": (), "__model__": model}))


@cache
def columns(model: type) -> tuple[Any, ...]:
    """The model's columns labelled with their attribute names, in row_class order."""
    mapper: Mapper[Any] = inspect(model)
    return tuple(attr.columns[0].label(attr.key) for attr in mapper.column_attrs)


def model_of(obj: Any) -> type | None:
    """The model of an ORM object or of a row; None for anything else."""
    if isinstance(obj, Row):
        return obj.__model__
    mapper = getattr(type(obj), "__mapper__", None)
    return type(obj) if mapper is not None else None


def load(session: Session, model: type[E], query: Select[Any]) -> list[E]:
    """The rows of `query` (a select of `model`, with its filters, order and limit) as read-only rows."""
    make = row_class(cast(type, model))._make
    # Table columns, run on the connection: no ORM result layer between the driver and the tuples (so
    # flushed first, as the session's own execute would).
    session.flush()
    selected = query.with_only_columns(*columns(cast(type, model)), maintain_column_froms=True)
    result = session.connection().execute(selected)
    return cast(list[E], [make(r) for r in result.fetchall()])


def load_where(session: Session, model: type[E], *conditions: Any, order_by: Sequence[Any] = ()) -> list[E]:
    """The model's rows matching the conditions, as read-only rows."""
    query = select(model).where(*conditions)
    if order_by:
        query = query.order_by(*order_by)
    return load(session, model, query)


def among(session: Session, column: Any, values: Collection[Any]) -> ColumnElement[bool]:
    """`column IN (values)` with one bound parameter whatever the number of values: SQLite reads them
    from a JSON array (json_each), PostgreSQL from an array (= ANY). An IN of 500 bound values cost more
    to render, at every call, than to run."""
    ordered = list(values)
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        each = func.json_each(bindparam(None, json.dumps(ordered), type_=String())).table_valued("value")
        return cast(ColumnElement[bool], column.in_(select(each.c.value)))
    if dialect == "postgresql":
        return cast(ColumnElement[bool], column == any_(bindparam(None, ordered, type_=ARRAY(column.type))))
    return cast(ColumnElement[bool], column.in_(ordered))


def entity_of(query: Select[Any]) -> type:
    """The model a select(Model) query selects."""
    entity = query.column_descriptions[0].get("entity")
    if entity is None:
        raise TypeError("not a select of one model")
    return cast(type, entity)
