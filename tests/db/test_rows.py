"""Read-only rows (strato.db.rows), as list pages load them: the same values as the ORM objects, and
`among` (one bound parameter for any number of ids) selecting exactly the ids asked, on SQLite and
PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from strato.db import migrate
from strato.db import rows as dbrows
from strato.db.engine import Database, sqlite_url
from strato.db.models import Domain, Zone


def _check(url: str) -> None:
    db = Database(url)
    try:
        migrate.upgrade(db.engine)
        with db.session() as s:
            root = Domain(name="ROOT", path="ROOT", level=0)
            s.add(root)
            s.flush()
            zones = [Zone(name=f"z{i:04d}", domain_id=root.id if i % 2 else None) for i in range(6001)]
            s.add_all(zones)
        with db.session() as s:
            orm = {z.id: z for z in s.scalars(select(Zone))}
            rows = dbrows.load(s, Zone, select(Zone).order_by(Zone.name))
            assert [r.name for r in rows] == sorted(z.name for z in orm.values())
            for r in rows[:50]:
                z = orm[r.id]
                assert (r.name, r.domain_id, r.created, r.removed) == (z.name, z.domain_id, z.created, z.removed)
                assert dbrows.model_of(r) is Zone
            ids = [z.id for z in zones]
            for wanted in ([], ids[:3], ids[:6000], [*ids[:2], "no-such-id"]):
                found = dbrows.load_where(s, Zone, dbrows.among(s, Zone.id, wanted))
                assert sorted(r.id for r in found) == sorted(i for i in wanted if i in orm)
            rooted = dbrows.load_where(s, Zone, dbrows.among(s, Zone.domain_id, [root.id]))
            assert len(rooted) == 3000
    finally:
        db.dispose()


def test_rows_on_sqlite(tmp_path: Path) -> None:
    _check(sqlite_url(tmp_path))


@pytest.mark.postgres
def test_rows_on_postgres(pg_database: str) -> None:
    _check(pg_database)
