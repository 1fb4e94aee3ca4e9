"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL, and
running them twice changes nothing (servers run them at every start)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import strato.db.models  # noqa: F401  (fills the metadata)
from strato.db import migrate
from strato.db.base import Base
from strato.db.engine import Database, sqlite_url


def _check(url: str) -> None:
    db = Database(url)
    try:
        migrate.upgrade(db.engine)
        migrate.upgrade(db.engine)  # idempotent: a restart runs it again
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            tables = set(inspect(conn).get_table_names())
        assert diff == [], f"models and migrations differ: {diff}"
        assert {"jobs", "layers", "volumes", "virtual_machines", "templates"} <= tables
    finally:
        db.dispose()


def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    _check(sqlite_url(tmp_path))


@pytest.mark.postgres
def test_postgres_schema_matches_models(pg_database: str) -> None:
    _check(pg_database)
