"""Fetching a live (not removed) row by id, with CloudStack's text when it is missing."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.orm import Session

from strato.db.base import Entity
from strato.errors import NotFound

E = TypeVar("E", bound=Entity)


def get_live(session: Session, model: type[E], entity_id: str, label: str, param: str = "id") -> E:
    """A row that exists and is not removed, or the NotFound CloudStack answers."""
    row = session.get(model, entity_id)
    if row is None or row.removed is not None:
        raise NotFound(f"Unable to find {label} with {param}={entity_id}")
    return row
